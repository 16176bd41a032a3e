"""Shared fixtures: tiny models, real vLLM servers started by rerank-kit's own launcher."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models
from rerank_kit import launcher
from rerank_kit.client import async_client as client_mod
from rerank_kit.launcher import machine
from rerank_kit.recipes import Recipe, get_recipe

pytest_plugins = ["server_starts"]  # the per-module count of vLLM start-ups in the summary

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
    "jina-reranker-v3",
    "nemotron-rerank",
]


def _torchvision_imports() -> bool:
    """Whether vLLM's vision models can load here (PyPI's CUDA torchvision beside a +cpu torch cannot)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


# Vision rerankers (tests/test_images.py): where torchvision imports (`make test-images`), served like the others.
HAVE_TORCHVISION = _torchvision_imports()
if HAVE_TORCHVISION:
    TINY_FAMILIES += ["jina-reranker-m0", "qwen3-vl-reranker"]


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


@dataclass
class Pending:
    """A server process spawned by the launcher, perhaps not healthy yet."""

    recipe: Recipe
    command: launcher.Command
    log: Path
    proc: subprocess.Popen[bytes]


def spawn_server(recipe: Recipe, log_dir: Path, env: dict[str, str] | None = None, **options) -> Pending:
    """Start a real vLLM server for ``recipe`` through rerank-kit's launcher, without waiting for it."""
    command = launcher.build_command(
        recipe, server_options(**options), vllm_version=launcher.vllm_version(), machine=machine.detect()
    )
    if env:
        command.env.update(env)
    log = log_dir / f"{recipe.family}-{command.port}.log"
    return Pending(recipe, command, log, launcher.spawn(command, log))


@contextlib.contextmanager
def running(pending: Pending) -> Iterator[Server]:
    """``pending`` once /health answers, stopped (with every process it started) on exit."""
    try:
        launcher.wait_healthy(
            pending.command.url,
            timeout=SERVER_START_TIMEOUT,
            alive=lambda: pending.proc.poll() is None,
            log_path=pending.log,
        )
        yield Server(pending.command.url, pending.recipe, pending.command, pending.log, pending.proc.pid)
    finally:
        launcher.stop_process_group(pending.proc.pid)


@contextlib.contextmanager
def start_server(recipe: Recipe, log_dir: Path, env: dict[str, str] | None = None, **options) -> Iterator[Server]:
    """A real vLLM server for ``recipe``, started through rerank-kit's launcher."""
    with running(spawn_server(recipe, log_dir, env, **options)) as server:
        yield server


# --- servers shared and started ahead ---------------------------------------------------------------------
#
# Most of the suite's time is vLLM start-ups (~20 s each here, mostly one core of imports: the API server's,
# then the engine core's), and most vLLM-backed modules only send requests to a server. A module-scoped fixture
# that gets its server from ``server_queue.serve(name, param)`` gains two things:
# - the next server its module will need (the next family, in the collected order) is spawned as soon as this
#   one is healthy, so its start-up overlaps the tests of this one (only within a module: never during another
#   module's timing-sensitive tests);
# - a server another module asks for by the same name and param is kept running for it instead of being stopped
#   and started again.
# SERVER_SPECS maps a server's name to how it is built: (param, tiny_model, a directory for its files) ->
# (recipe, start_server keyword arguments); SERVER_FIXTURES maps a module-scoped fixture to the (name, param) of
# the server it stands for. Two fixtures share a server only by standing for the same one, so a server whose
# flags are under test gets a name of its own.

ServerKey = tuple[str, Any]
ServerSpec = Callable[[Any, Callable[[str], Path], Path], tuple[Recipe, dict[str, Any]]]
_PLAN = pytest.StashKey[list[tuple[str, ServerKey]]]()


# vLLM flags added to every family server, e.g. "--model-impl transformers" to run the families' tests on vLLM's
# Transformers backend. Read at import: _isolated_state clears RERANK_KIT_* variables.
FAMILY_VLLM_ARGS = tuple(shlex.split(os.environ.get("RERANK_KIT_TEST_VLLM_ARGS", "")))


def family_spec(family: Any, tiny_model: Callable[[str], Path], _: Path) -> tuple[Recipe, dict[str, Any]]:
    """A family's tiny model with the suite's server options (float32, eager, small KV cache)."""
    options = {"extra_args": FAMILY_VLLM_ARGS} if FAMILY_VLLM_ARGS else {}
    return get_recipe(str(tiny_model(family)), family=family), options


def minilm_spec(_: Any, __: Callable[[str], Path], ___: Path) -> tuple[Recipe, dict[str, Any]]:
    """The packaged all-MiniLM-L6-v2 as `rerank-kit up` serves it on this CPU (its dtype), with an API key."""
    return get_recipe("sentence-transformers/all-MiniLM-L6-v2"), {"dtype": None, "api_key": MINILM_KEY}


SERVER_SPECS: dict[str, ServerSpec] = {"family": family_spec, "minilm": minilm_spec}
SERVER_FIXTURES: dict[str, Callable[[Any], ServerKey]] = {
    "family_server": lambda family: ("family", family),  # tests/test_families.py, one per family
    "qwen3_server": lambda _: ("family", "qwen3-reranker"),  # the same server, for the client tests
    "minilm_server": lambda _: ("minilm", None),  # tests/test_bench.py and tests/test_third_party.py
    "vision_server": lambda family: ("family", family),  # tests/test_images.py (where torchvision imports)
}


class ServerQueue:
    """Real vLLM servers for the suite's module-scoped fixtures: started ahead within a module, shared across
    modules by name (see above). ``plan`` is the collected order: (module, (fixture name, param)) per test."""

    def __init__(self, plan: list[tuple[str, ServerKey]], tiny_model, log_dir: Path) -> None:
        self._plan = plan
        self._tiny_model = tiny_model
        self._log_dir = log_dir
        self._pending: dict[ServerKey, Pending] = {}
        self._parked: dict[ServerKey, tuple[contextlib.ExitStack, Server]] = {}
        self.started = 0

    def _spawn(self, key: ServerKey) -> Pending:
        name, param = key
        recipe, options = SERVER_SPECS[name](param, self._tiny_model, self._log_dir)
        self.started += 1
        return spawn_server(recipe, self._log_dir, **options)

    def _next_in_module(self, module: str, key: ServerKey) -> ServerKey | None:
        keys = list(dict.fromkeys(k for m, k in self._plan if m == module))
        if key in keys and keys.index(key) + 1 < len(keys):
            return keys[keys.index(key) + 1]
        return None

    def _used_after(self, module: str, key: ServerKey) -> bool:
        modules = list(dict.fromkeys(m for m, _ in self._plan))
        later = modules[modules.index(module) + 1 :] if module in modules else []
        return any(m in later and k == key for m, k in self._plan)

    @contextlib.contextmanager
    def serve(self, key: ServerKey, module: str) -> Iterator[Server]:
        if key in self._parked:
            stack, server = self._parked.pop(key)
        else:
            stack = contextlib.ExitStack()
            pending = self._pending.pop(key, None) or self._spawn(key)
            server = stack.enter_context(running(pending))
        following = self._next_in_module(module, key)
        if following is not None and following not in self._pending and following not in self._parked:
            self._pending[following] = self._spawn(following)
        try:
            yield server
        finally:
            if self._used_after(module, key):
                self._parked[key] = (stack, server)
            else:
                stack.close()

    def close(self) -> None:
        for stack, _ in self._parked.values():
            stack.close()
        for pending in self._pending.values():
            launcher.stop_process_group(pending.proc.pid)


@pytest.fixture(scope="session")
def server_queue(request, tiny_model, server_logs) -> Iterator[ServerQueue]:
    queue = ServerQueue(request.config.stash.get(_PLAN, []), tiny_model, server_logs)
    yield queue
    queue.close()


def queued_server(request, server_queue: ServerQueue) -> Iterator[Server]:
    """The body of a module-scoped fixture in SERVER_FIXTURES: its server, from the queue."""
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed")
    key = SERVER_FIXTURES[request.fixturename](getattr(request, "param", None))
    with server_queue.serve(key, request.node.nodeid.split("::")[0]) as server:
        yield server


@pytest.fixture(scope="module")
def qwen3_server(request, server_queue) -> Iterator[Server]:
    """The tiny Qwen3-Reranker as tests/test_families.py serves it (one server for both modules)."""
    yield from queued_server(request, server_queue)


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


# The key of the shared MiniLM server: tests/test_third_party.py calls it with the key as third-party clients do.
MINILM_KEY = "rk-third-party-4e7b2a91"


@pytest.fixture(scope="module")
def minilm_server(request, server_queue) -> Iterator[Server]:
    """The embedded default: the packaged all-MiniLM-L6-v2, served by the CPU defaults, with an API key
    (MINILM_KEY); one server for every module that uses it."""
    yield from queued_server(request, server_queue)


@pytest.hookimpl(trylast=True)  # after pytest has grouped the tests by their parametrized fixtures
def pytest_collection_modifyitems(config, items):
    plan = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        for name, key in SERVER_FIXTURES.items():
            if name in getattr(item, "fixturenames", ()):
                param = callspec.params.get(name) if callspec is not None else None
                plan.append((item.nodeid.split("::")[0], key(param)))
    config.stash[_PLAN] = plan
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
