"""Shared fixtures: tiny models, real vLLM servers started by rerank-kit's own launcher."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models
from rerank_kit import launcher
from rerank_kit.client import async_client as client_mod
from rerank_kit.launcher import machine
from rerank_kit.recipes import Recipe, get_recipe

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
requires_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (pip install 'rerank-kit[cpu]')")
SERVER_START_TIMEOUT = 300.0

# The tiny model per family that the integration and parity tests serve.
TINY_FAMILIES = [
    "embedding",
    "ms-marco-cross-encoder",
    "bge-reranker",
    "jina-reranker-v2",
    "gte-modernbert-reranker",
    "qwen3-reranker",
    "qwen3-reranker-seq-cls",
    "mxbai-rerank-v2",
    "bge-reranker-v2-gemma",
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory):
    """Daemon pid/log files go to a temporary directory, never the developer's own; the client's
    environment fallbacks start unset."""
    saved = dict(os.environ)
    os.environ["RERANK_KIT_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    for name in list(os.environ):
        if name.startswith("RERANK_KIT_") and name != "RERANK_KIT_STATE_DIR" and name != "RERANK_KIT_REFERENCE_PYTHON":
            del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_root(request) -> Path:
    """Where tiny models are built once and reused across runs (pytest's cache directory)."""
    return Path(request.config.cache.mkdir("tiny-models"))


@pytest.fixture(scope="session")
def tiny_model(tiny_root):
    def get(family: str) -> Path:
        return tiny_models.build(family, tiny_root)

    return get


@dataclass
class Server:
    url: str
    recipe: Recipe
    command: launcher.Command
    log: Path
    pid: int

    @property
    def model(self) -> str:
        return self.recipe.model_id


def server_options(**overrides) -> launcher.ServeOptions:
    # float32 for exact parity, eager for fast start, a small KV cache so several servers fit.
    defaults = dict(port=launcher.free_port(), eager=True, dtype="float32", kv_cache_gib=0.5)
    defaults.update(overrides)
    return launcher.ServeOptions(**defaults)


@contextlib.contextmanager
def start_server(recipe: Recipe, log_dir: Path, env: dict[str, str] | None = None, **options) -> Iterator[Server]:
    """A real vLLM server for ``recipe``, started through rerank-kit's launcher."""
    command = launcher.build_command(
        recipe, server_options(**options), vllm_version=launcher.vllm_version(), machine=machine.detect()
    )
    if env:
        command.env.update(env)
    log = log_dir / f"{recipe.family}-{command.port}.log"
    with launcher.serving(command, log_path=log, timeout=SERVER_START_TIMEOUT) as proc:
        yield Server(url=command.url, recipe=recipe, command=command, log=log, pid=proc.pid)


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def minilm_server(server_logs) -> Iterator[Server]:
    """The embedded default: the packaged all-MiniLM-L6-v2, served by the CPU defaults."""
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed")
    with start_server(get_recipe("sentence-transformers/all-MiniLM-L6-v2"), server_logs, dtype=None) as server:
        yield server


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def sleeps(monkeypatch):
    """The client's backoff sleeps (sync and async), recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(client_mod.time, "sleep", recorded.append)

    async def fake_async_sleep(delay):
        recorded.append(delay)

    monkeypatch.setattr(client_mod.asyncio, "sleep", fake_async_sleep)
    return recorded
