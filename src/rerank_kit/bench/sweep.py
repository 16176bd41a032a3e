"""A benchmark over one or more load levels: what `rerank-kit bench` runs, without the terminal.

levels = parse_levels("1,4,16")
reports = run_sweep(BenchConfig(urls=["http://127.0.0.1:8000"]), levels)
save_reports(reports, out=Path("bench.json"))
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rerank_kit.bench import report as rep
from rerank_kit.bench.loadgen import Sample
from rerank_kit.bench.runner import BenchConfig, run_bench
from rerank_kit.bench.workloads import Workload, load_workload
from rerank_kit.errors import ConfigError

# Called once per level with its config: a context (open while the level runs) that gives the callback
# for that level's samples, e.g. a progress bar.
LevelProgress = Callable[[BenchConfig, Workload], AbstractContextManager[Callable[[Sample, float], None] | None]]


def parse_levels(text: str) -> list[int]:
    """Concurrency levels from "16" or "1,4,16,64".

    >>> parse_levels("1, 4,16")
    [1, 4, 16]
    """
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--concurrency must be a number or a comma-separated list like 1,4,16,64, not {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise ConfigError("--concurrency values must be >= 1")
    return levels


def check_sweep(config: BenchConfig, levels: list[int]) -> None:
    """Refuse option combinations that cannot run."""
    if config.requests is not None and config.duration is not None:
        raise ConfigError("pass --requests or --duration, not both")
    if config.rate is not None and len(levels) > 1:
        raise ConfigError("--rate runs one open-loop level; drop the concurrency list")
    if not config.urls:
        raise ConfigError("no server URL: pass --url (or set RERANK_KIT_URL)")


def workload_for(config: BenchConfig) -> Workload:
    return load_workload(
        config.workload,
        docs_per_request=config.docs_per_request,
        doc_tokens=config.doc_tokens,
        cases=config.cases,
        seed=config.seed,
    )


def run_level(
    config: BenchConfig, workload: Workload, on_progress: Callable[[Sample, float], None] | None = None
) -> dict[str, Any]:
    """One load level; Ctrl-C stops it and keeps what was measured (``summary.interrupted``)."""

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            return await run_bench(config, workload=workload, on_progress=on_progress, stop=stop)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    return asyncio.run(main())


def run_sweep(
    config: BenchConfig,
    levels: list[int],
    *,
    workload: Workload | None = None,
    progress: LevelProgress | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``config`` at each concurrency level in turn; stop early when a level is interrupted."""
    check_sweep(config, levels)
    workload = workload or workload_for(config)
    reports = []
    for level in levels:
        level_config = dataclasses.replace(config, concurrency=level)
        with progress(level_config, workload) if progress else contextlib.nullcontext() as on_progress:
            report = run_level(level_config, workload, on_progress)
        if command:
            report["command"] = command
        reports.append(report)
        if on_report is not None:
            on_report(report)
        if report["summary"]["interrupted"]:
            break
    return reports


def sweep_data(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """What `--out` and `--json` hold: one report, or ``{"sweep": [...]}`` for several levels."""
    return reports[0] if len(reports) == 1 else {"sweep": reports}


def save_reports(reports: list[dict[str, Any]], *, out: Path | None = None, plot: Path | None = None) -> list[Path]:
    """Write the JSON report (``out``) and, for a sweep, its plot (default: next to ``out``). Returns the paths."""
    written = []
    if len(reports) > 1:
        png = plot or (out.with_suffix(".png") if out else Path("bench-sweep.png"))
        written.append(rep.plot_sweep(reports, png))
    if out:
        written.append(rep.write_json(sweep_data(reports), out))
    return written


def all_failed(reports: list[dict[str, Any]]) -> bool:
    """True when some level got no answer at all (the command then exits 1)."""
    return any(r["summary"]["ok"] == 0 for r in reports)
