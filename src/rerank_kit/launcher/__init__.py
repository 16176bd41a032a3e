"""Recipe + options -> the vLLM command; start it, wait until healthy, stop it.

One job per module: ``vllm`` (the installed vLLM and what it supports), ``command`` (options ->
``Command``: argv, environment, host, port), ``fleet`` (several servers on one machine: replicas, several
models), ``process`` (start, wait for /health, stop, explain a failed start) and ``daemon`` (servers in
the background and their pid/log/state files). Every name is re-exported here, so
``from rerank_kit import launcher; launcher.build_command(...)`` is the usual way in.

The command adapts to the installed vLLM version and, on a machine without a GPU, to the CPU it runs on.

    >>> from rerank_kit.recipes import get_recipe
    >>> cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(port=9000),
    ...                     vllm_version="0.32.0", machine=None)
    >>> cmd.argv[1:4], "--runner" in cmd.server_args, cmd.port
    (['-m', 'vllm.entrypoints.launchers.api_server.entry', '--model'], True, 9000)
"""

from rerank_kit.launcher.command import (
    API_KEY_VARIABLE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    GUARD_MIDDLEWARE,
    LOCAL_HOSTS,
    Command,
    EnvRef,
    ServeOptions,
    build_command,
    use_gpu,
)
from rerank_kit.launcher.daemon import (
    ServerRecord,
    by_model,
    list_servers,
    server_statuses,
    start_daemon,
    start_replicas,
    state_dir,
    stop_daemon,
    stop_servers,
)
from rerank_kit.launcher.fleet import commands_for, families_for, model_commands, replica_commands
from rerank_kit.launcher.process import (
    DEFAULT_START_TIMEOUT,
    HEALTH_POLL_INTERVAL,
    LOG_TAIL_LINES,
    STOP_TIMEOUT,
    check_port_free,
    failure_hint,
    follow,
    free_port,
    group_alive,
    health_progress,
    pid_alive,
    probe_health,
    run_foreground,
    serving,
    spawn,
    stop_process_group,
    tail,
    wait_healthy,
)
from rerank_kit.launcher.vllm import (
    DEFAULT_VLLM_VERSION,
    MIN_VLLM_VERSION,
    NEWEST_VERIFIED_VLLM_VERSION,
    TEMPLATE_MIN_VLLM_VERSION,
    VLLM_ENTRYPOINT,
    VllmFeatures,
    support_note,
    vllm_version,
)
from rerank_kit.recipes import resolve_model_path

__all__ = [
    "API_KEY_VARIABLE",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_VLLM_VERSION",
    "GUARD_MIDDLEWARE",
    "HEALTH_POLL_INTERVAL",
    "LOCAL_HOSTS",
    "LOG_TAIL_LINES",
    "MIN_VLLM_VERSION",
    "NEWEST_VERIFIED_VLLM_VERSION",
    "STOP_TIMEOUT",
    "TEMPLATE_MIN_VLLM_VERSION",
    "VLLM_ENTRYPOINT",
    "Command",
    "EnvRef",
    "ServeOptions",
    "ServerRecord",
    "VllmFeatures",
    "build_command",
    "by_model",
    "check_port_free",
    "commands_for",
    "failure_hint",
    "families_for",
    "follow",
    "free_port",
    "group_alive",
    "health_progress",
    "list_servers",
    "model_commands",
    "pid_alive",
    "probe_health",
    "replica_commands",
    "resolve_model_path",
    "run_foreground",
    "server_statuses",
    "serving",
    "spawn",
    "start_daemon",
    "start_replicas",
    "state_dir",
    "stop_daemon",
    "stop_process_group",
    "stop_servers",
    "support_note",
    "tail",
    "use_gpu",
    "vllm_version",
    "wait_healthy",
]
