"""Recipe + options -> the vLLM command; start it, wait until healthy, stop it.

The operator's room. One job per module: ``machine`` (host facts and the choices made from them),
``vllm`` (the installed vLLM and what it supports), ``options`` (``ServeOptions``), ``command`` (options ->
``Command``: argv, environment, host, port), ``fleet`` (several servers on one machine: replicas, several
models), ``process`` (start, wait for /health, stop, explain a failed start), ``daemon`` (servers in the
background and their pid/log/state files), ``models`` (where a model's files are), ``quantization``,
``apple`` (Apple Silicon), ``gateway`` + ``_gateway_config`` (Caddy), ``switch``, ``k8s``, ``selfcheck``,
``verify``, ``reference``, ``offline`` and the wheel checker (``wheelcheck``, ``vllm_source``).
The names below are re-exported here, loaded on first use (PEP 562), so
``from rerank_kit import launcher; launcher.build_command(...)`` is the usual way in and importing one
module of this package (the wheel checker runs with the standard library alone) loads no other.

The command adapts to the installed vLLM version and, on a machine without a GPU, to the CPU it runs on.

    >>> from rerank_kit.launcher import ServeOptions, build_command
    >>> from rerank_kit.recipes import get_recipe
    >>> cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(port=9000),
    ...                     vllm_version="0.32.0", machine=None)
    >>> cmd.argv[1:4], "--runner" in cmd.server_args, cmd.port
    (['-m', 'vllm.entrypoints.launchers.api_server.entry', '--model'], True, 9000)
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys("Command EnvRef build_command use_gpu".split(), "rerank_kit.launcher.command"),
    **dict.fromkeys(
        "API_KEY_VARIABLE DEFAULT_HOST DEFAULT_PORT LOCAL_HOSTS ServeOptions".split(), "rerank_kit.launcher.options"
    ),
    **dict.fromkeys(
        (
            "ServerRecord by_model list_servers server_statuses start_daemon start_replicas state_dir "
            "stop_daemon stop_servers"
        ).split(),
        "rerank_kit.launcher.daemon",
    ),
    **dict.fromkeys("commands_for families_for model_commands replica_commands".split(), "rerank_kit.launcher.fleet"),
    **dict.fromkeys(
        (
            "DEFAULT_START_TIMEOUT HEALTH_POLL_INTERVAL LOG_TAIL_LINES STOP_TIMEOUT check_port_free "
            "failure_hint follow free_port group_alive health_progress pid_alive probe_health run_foreground "
            "serving spawn stop_process_group tail wait_healthy"
        ).split(),
        "rerank_kit.launcher.process",
    ),
    **dict.fromkeys(
        (
            "DEFAULT_VLLM_VERSION MIN_VLLM_VERSION NEWEST_VERIFIED_VLLM_VERSION TEMPLATE_MIN_VLLM_VERSION "
            "VLLM_ENTRYPOINT VllmFeatures family_note support_note vllm_version"
        ).split(),
        "rerank_kit.launcher.vllm",
    ),
    **dict.fromkeys("resolve_model_path".split(), "rerank_kit.launcher.models"),
    "GUARD_MIDDLEWARE": "rerank_kit._contract",
}

__all__ = sorted(_WHERE)  # noqa: PLE0605 - built from the table above


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:  # a submodule not imported yet: launcher.fleet, launcher.apple, ...
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
