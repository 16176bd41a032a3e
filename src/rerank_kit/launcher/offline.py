"""Score in process with vLLM's offline API, using exactly the flags a server would get.

The server command is the single source of truth: its argv is parsed by vLLM's own argument
parser into engine arguments, so `rerank-kit rank-local` and `rerank-kit serve` cannot disagree.
Example (loads the model)::

    from rerank_kit.recipes import get_recipe
    results = rank_offline(get_recipe("BAAI/bge-reranker-base"), ServeOptions(),
                           "what is vLLM?", ["an inference engine", "a fruit"])
    results[0].index, results[0].relevance_score, results[0].text
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from rerank_kit.launcher import ServeOptions, build_command, vllm_version
from rerank_kit.launcher import machine as machine_mod
from rerank_kit.recipes import Recipe, check_instruction
from rerank_kit.types import RerankResult, document_text

# Server-only flags that mean nothing to the in-process engine.
_SERVER_ONLY = {"host", "port", "api_key", "served_model_name", "chat_template", "middleware"}


def engine_kwargs_from_argv(argv: Sequence[str]) -> tuple[dict[str, object], str | None]:
    """Parse a server's ``Command.server_args`` with vLLM's parser into LLM(...) kwargs and a chat template."""
    from vllm.engine.arg_utils import EngineArgs

    from rerank_kit.launcher.vllm import server_parser

    namespace = server_parser().parse_args(list(argv))
    engine_args = EngineArgs.from_cli_args(namespace)
    kwargs = {
        f.name: getattr(engine_args, f.name)
        for f in dataclasses.fields(EngineArgs)
        if f.name not in _SERVER_ONLY and getattr(engine_args, f.name) != f.default
    }
    template = None
    if namespace.chat_template:
        with open(namespace.chat_template, encoding="utf-8") as fh:
            template = fh.read()
    return kwargs, template


def rank_offline(
    recipe: Recipe,
    options: ServeOptions,
    query: str,
    documents: Sequence[Any],
    *,
    top_n: int | None = None,
    instruction: str | None = None,
) -> list[RerankResult]:
    """Load the model in this process, score ``documents`` against ``query``, best first (the ``top_n`` best).

    Documents are strings or anything ``types.document_text`` reads (e.g. ``{"text": ..., "id": ...}``);
    each result carries its document as given, like the client's results.
    """
    check_instruction(recipe.model_id, instruction, recipe.family)
    texts = [document_text(d) for d in documents]
    command = build_command(recipe, options, vllm_version=vllm_version(), machine=machine_mod.detect())
    for name, value in command.environ({}).items():
        os.environ[name] = value
    # vLLM logs to stdout by default; keep stdout for results (`rank --json` is read by programs).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    kwargs, template = engine_kwargs_from_argv(command.server_args)

    from vllm import LLM, PoolingParams  # imported late: seconds of start-up and torch

    llm = LLM(**kwargs)  # type: ignore[arg-type]
    pooling = (
        PoolingParams(extra_kwargs={"chat_template_kwargs": {"instruction": instruction}}) if instruction else None
    )
    outputs = llm.score(query, texts, use_tqdm=False, chat_template=template, pooling_params=pooling)
    ranked = sorted(
        (RerankResult(i, float(out.outputs.score), documents[i]) for i, out in enumerate(outputs)),
        key=lambda r: r.relevance_score,
        reverse=True,
    )
    return ranked[:top_n] if top_n else ranked
