"""Daemon servers (`rerank-kit up/down/status`): one record, pid and log file per port in the state directory.

Several models run side by side as servers on consecutive ports; each record names its model, and
``by_model`` groups them (`rerank-kit status` lists them by model, `rerank-kit down MODEL` stops one).

``ServerRecord`` owns the file names: ``ServerRecord.log_path_for(port)`` is where a server's log is,
whether or not it still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rerank_kit._contract import STATE_DIR_ENV
from rerank_kit.errors import PortInUseError, ServeError
from rerank_kit.launcher.command import Command
from rerank_kit.launcher.process import (
    DEFAULT_START_TIMEOUT,
    group_alive,
    pid_alive,
    probe_health,
    spawn,
    stop_process_group,
    wait_healthy,
)


def state_dir() -> Path:
    """Where pid, log and metadata files live: $RERANK_KIT_STATE_DIR, else $XDG_STATE_HOME/rerank-kit."""
    # RERANK_KIT_STATE_DIR: directory for daemon state (pid/log/json per port).
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        path = Path(explicit)
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(base) / "rerank-kit"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_file(port: int | str, suffix: str) -> Path:
    return state_dir() / f"server-{port}{suffix}"


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
    # The name clients send as "model" (--served-model-name, else --model); "" in records of older releases.
    served_as: str = ""

    @property
    def served_model(self) -> str:
        """The name clients send as "model" to this server."""
        return self.served_as or self.model

    def serves(self, model: str) -> bool:
        """``model`` names this server's model: as given to `up`, or as clients send it."""
        return model in (self.model, self.served_as)

    @property
    def alive(self) -> bool:
        """The API server (the group leader) is running."""
        return pid_alive(self.pid)

    @classmethod
    def path_for(cls, port: int) -> Path:
        """The record (JSON) of the server on ``port``."""
        return _state_file(port, ".json")

    @classmethod
    def pid_path_for(cls, port: int) -> Path:
        """The pid file of the server on ``port`` (for scripts that do not read JSON)."""
        return _state_file(port, ".pid")

    @classmethod
    def log_path_for(cls, port: int) -> Path:
        """The log of the server on ``port``; it stays after `down` for a post-mortem."""
        return _state_file(port, ".log")

    @classmethod
    def load(cls, port: int) -> ServerRecord | None:
        """The record of the server on ``port``, or None when there is none (or it is unreadable)."""
        try:
            return cls(**json.loads(cls.path_for(port).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        self.path_for(self.port).write_text(json.dumps(self.__dict__, indent=2))
        self.pid_path_for(self.port).write_text(f"{self.pid}\n")

    def remove(self) -> None:
        for path in (self.path_for(self.port), self.pid_path_for(self.port)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def list_servers() -> list[ServerRecord]:
    """Every recorded daemon server, by port (dead ones too: see ``ServerRecord.alive``)."""
    records = []
    for path in sorted(state_dir().glob(_state_file("*", ".json").name)):
        with contextlib.suppress(ValueError):
            record = ServerRecord.load(int(path.stem.split("-", 1)[1]))
            if record is not None:
                records.append(record)
    return records


def by_model(records: Sequence[ServerRecord]) -> dict[str, list[ServerRecord]]:
    """``records`` grouped by model, models in the order of their first port, each model's by port."""
    groups: dict[str, list[ServerRecord]] = {}
    for record in sorted(records, key=lambda r: r.port):
        groups.setdefault(record.model, []).append(record)
    return groups


def _select(port: int | None, model: str | None) -> list[ServerRecord]:
    """The recorded servers on ``port`` and of ``model`` (None: any), grouped by model; a ``model``
    nothing is recorded for is a ServeError that lists the recorded models."""
    records = [r for r in list_servers() if port is None or r.port == port]
    if model is None:
        return [r for group in by_model(records).values() for r in group]
    chosen = [r for r in records if r.serves(model)]
    if not chosen:
        known = ", ".join(by_model(list_servers())) or "none"
        raise ServeError(f"no rerank-kit server recorded for model {model!r}; recorded models: {known}")
    return [r for group in by_model(chosen).values() for r in group]


def server_statuses(port: int | None = None, model: str | None = None) -> list[dict[str, object]]:
    """One row per recorded server (only ``port``'s, ``model``'s when given), grouped by model: what
    `rerank-kit status` shows.

    Keys: port, pid, model, served_as (the name clients send), url, running (the process lives),
    healthy (/health answers 200), log, uptime_s.
    """
    rows: list[dict[str, object]] = []
    for r in _select(port, model):
        running = r.alive
        rows.append(
            {
                "port": r.port,
                "pid": r.pid,
                "model": r.model,
                "served_as": r.served_model,
                "url": r.url,
                "running": running,
                "healthy": running and probe_health(r.url, timeout=2.0),
                "log": r.log,
                "uptime_s": round(time.time() - r.started),
            }
        )
    return rows


def start_daemon(
    command: Command,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    on_wait: Callable[[float], None] | None = None,
    check: Callable[[Command], None] | None = None,
) -> ServerRecord:
    """Start ``command`` in the background, wait for /health, run ``check`` (the self-check), and record
    it. Stops it again on any failure."""
    existing = ServerRecord.load(command.port)
    if existing is not None and existing.alive:
        raise PortInUseError(
            f"a rerank-kit server already runs on port {command.port} (pid {existing.pid}, {existing.model}); "
            f"stop it with `rerank-kit down --port {command.port}` or pick another --port"
        )
    log_path = ServerRecord.log_path_for(command.port)
    proc = spawn(command, log_path)
    record = ServerRecord(
        port=command.port,
        pid=proc.pid,
        url=command.url,
        model=command.recipe.model_id,
        log=str(log_path),
        command=command.shell(),
        started=time.time(),
        served_as=command.model_name,
    )
    record.save()
    try:
        wait_healthy(
            command.url, timeout=timeout, alive=lambda: proc.poll() is None, log_path=log_path, on_wait=on_wait
        )
        if check is not None:
            check(command)
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


def stop_servers(port: int | None = None, model: str | None = None) -> list[ServerRecord]:
    """Stop the server recorded on ``port``, or every server of ``model`` (both None: every recorded
    server); returns the stopped records.

    A ``port`` or ``model`` with no record is a ServeError; no servers at all (both None) is an empty list.
    """
    if port is None and model is None:
        return [r for r in (stop_daemon(s.port) for s in list_servers()) if r is not None]
    if model is not None:
        return [r for r in (stop_daemon(s.port) for s in _select(port, model)) if r is not None]
    record = stop_daemon(port)
    if record is None:
        raise ServeError(f"no rerank-kit server recorded on port {port}")
    return [record]


def start_replicas(
    commands: Sequence[Command],
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    on_wait: Callable[[float], None] | None = None,
    check: Callable[[Command], None] | None = None,
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
    try:
        if failed:
            raise failed[0]
        # one after another, once all are healthy: each check loads a tokenizer, which is not thread-safe
        for command in commands if check is not None else ():
            check(command)
    except BaseException:
        for record in records:
            stop_daemon(record.port)
        raise
    return records
