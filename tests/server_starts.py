"""Counts the vLLM servers each test module starts, for the terminal summary (`make test` prints it).

Every server the suite starts, through a fixture, `rerank-kit up` in a subprocess or the CLI, runs an API server
process (`python -m vllm.entrypoints...` or `python -m rerank_kit.launcher.vllm_cli`); a thread polls /proc for
new ones and books each to the test module running when it appeared. Start-ups are most of the suite's time,
so this is the number to watch when a change makes the suite slower.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path

import pytest

_ENTRY_POINTS = (b"vllm.entrypoints", b"rerank_kit.launcher.vllm_cli")
_POLL_SECONDS = 0.5  # a server takes >= 10 s to start, so none is missed


class _Counter:
    def __init__(self) -> None:
        self.module = "(collection)"
        self.seen: dict[str, str] = {}
        self.stop = threading.Event()

    def poll(self) -> None:
        while not self.stop.wait(_POLL_SECONDS):
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid in self.seen:
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if len(argv) > 2 and argv[1] == b"-m" and argv[2].startswith(_ENTRY_POINTS) and self._ours(pid):
                    # an engine core forked from its API server (RERANK_KIT_ENGINE_START=fork) has the same
                    # command line until vLLM renames it: part of that server's start, not another one
                    self.seen[pid] = "" if self._parent(pid) in self.seen else self.module

    @staticmethod
    def _parent(pid: str) -> str:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return ""
        return next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")

    @staticmethod
    def _ours(pid: str) -> bool:
        """Started by this session: it inherited the state directory conftest gives the session (servers that
        `up` daemonises are no children of pytest, and another run's servers are not ours)."""
        ours = f"RERANK_KIT_STATE_DIR={os.environ.get('RERANK_KIT_STATE_DIR', '')}".encode()
        try:
            return ours in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False


_counter = _Counter()


def pytest_sessionstart(session: pytest.Session) -> None:
    if Path("/proc").is_dir():
        threading.Thread(target=_counter.poll, daemon=True, name="server-starts").start()


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _counter.module = nodeid.split("::", maxsplit=1)[0]


def pytest_terminal_summary(terminalreporter) -> None:
    _counter.stop.set()
    counts = collections.Counter(module for module in _counter.seen.values() if module)
    if not counts:
        return
    terminalreporter.write_sep("=", f"vLLM server starts: {sum(counts.values())}")
    for module, n in counts.most_common():
        terminalreporter.write_line(f"{n:4d}  {module}")
