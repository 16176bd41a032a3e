"""Server processes: check the port, start a ``Command``, wait for /health, explain a failed start, stop it.

>>> probe_health(f"http://127.0.0.1:{free_port()}", timeout=1.0)  # nothing listens there
False
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from rerank_kit.client.probe import healthy
from rerank_kit.errors import PortInUseError, ServeError, ServerStartError
from rerank_kit.launcher.command import Command

# A CPU server starts in 40-90 s on a 2-core machine; a GPU server downloading 8B weights needs longer.
DEFAULT_START_TIMEOUT = 900.0
HEALTH_POLL_INTERVAL = 0.5
STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 40


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


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- why a start failed ---------------------------------------------------------------------------

# Patterns in a failed server's log -> the likely fix.
_FAILURE_HINTS: tuple[tuple[str, str], ...] = (
    (
        # vLLM 0.10-0.33 spellings: the KV cache asked for (--kv-cache-memory-bytes / VLLM_CPU_KVCACHE_SPACE)
        # does not fit, the start-up memory check (0.20-0.32), a worker with no room left (0.33).
        r"less than requested memory for kv|less than desired CPU memory utilization|leaving none for the KV cache|"
        r"No available memory for the cache blocks|larger than the available KV cache memory|Not enough memory|"
        r"Cannot allocate memory",
        "the CPU backend could not reserve its memory: lower --kv-cache-gib (VLLM_CPU_KVCACHE_SPACE on old vLLM) "
        "or --max-model-len, or free memory on this machine",
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


def tail(path: Path, lines: int = LOG_TAIL_LINES, *, missing_ok: bool = True) -> str:
    """The last ``lines`` lines of a log file: '' when it cannot be read, or ServeError with ``missing_ok=False``."""
    if not missing_ok and not path.is_file():
        raise ServeError(f"no server log at {path}")
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def follow(path: Path, *, poll: float = 0.5) -> Iterator[str]:
    """The lines written to ``path`` from now on, as they come (``tail -f``); stop by breaking out or Ctrl-C."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        fh.seek(0, os.SEEK_END)
        while True:
            line = fh.readline()
            if line:
                yield line
            else:
                time.sleep(poll)


# --- health ---------------------------------------------------------------------------------------


def probe_health(url: str, *, timeout: float = 2.0, http: httpx.Client | None = None) -> bool:
    """True when ``url``/health answers 200 within ``timeout`` seconds; any HTTP failure is False.

    Pass ``http`` to reuse one client across polls.
    """
    return healthy(url, timeout=timeout, http=http)


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
    with httpx.Client() as http:
        while True:
            elapsed = time.monotonic() - start
            if probe_health(url, timeout=5.0, http=http):
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


# --- start and stop -------------------------------------------------------------------------------


def spawn(command: Command, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in the background, its output going to ``log_path``, after checking its port."""
    check_port_free(command.host, command.port)
    env = command.environ()
    with log_path.open("wb") as log:
        # A new session puts vLLM's API server, engine core and workers in one process group,
        # so stop_process_group (and `down`) can stop all of them.
        return subprocess.Popen(
            command.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def run_foreground(
    command: Command, *, check: Callable[[Command], None] | None = None, timeout: float = DEFAULT_START_TIMEOUT
) -> int:
    """Run the vLLM server in the foreground until it exits or Ctrl-C; returns its exit code.

    Without ``check`` this process becomes the server (exec), so signals reach it directly. With
    ``check`` (the self-check) the server runs as a child whose output stays on this terminal; once
    /health answers ``check`` runs, and a failed check stops the server and raises.
    """
    check_port_free(command.host, command.port)
    if check is None:
        os.execvpe(command.argv[0], command.argv, command.environ())  # noqa: S606
    # A session of its own, so that stopping it stops the engine core and workers too.
    proc = subprocess.Popen(command.argv, env=command.environ(), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(command.url, timeout=timeout, alive=lambda: proc.poll() is None)
        check(command)
        return proc.wait()
    except KeyboardInterrupt:
        stop_process_group(proc.pid)
        return 130
    except BaseException:
        stop_process_group(proc.pid)
        raise


@contextlib.contextmanager
def serving(
    command: Command,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    log_path: Path,
    check: Callable[[Command], None] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` for the duration of a ``with`` block (used by tests and benchmarks)."""
    proc = spawn(command, log_path)
    try:
        wait_healthy(command.url, timeout=timeout, alive=lambda: proc.poll() is None, log_path=log_path)
        if check is not None:
            check(command)
        yield proc
    finally:
        stop_process_group(proc.pid)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
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
            pid_alive(pgid)  # reaps our own child leader if it exited
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


def health_progress(say: Callable[[str], None], every: float = 10.0) -> Callable[[float], None]:
    """An ``on_wait`` callback for the start functions: says how long the start has waited, every ``every`` s."""
    last = [0.0]

    def progress(elapsed: float) -> None:
        if elapsed - last[0] >= every:
            last[0] = elapsed
            say(f"  waiting for /health ... {elapsed:.0f} s")

    return progress
