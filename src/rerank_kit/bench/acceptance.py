"""Serve several models one after another and check each for real: what `make verify-gpu` runs.

For each model: start it with rerank-kit's launcher (the start-up self-check included), compare its
scores with the reference implementation on local weights (`rerank_kit.launcher.verify`), run a short
closed-loop benchmark, stop it, and put everything in one JSON-able report. A model that fails is
recorded with its error and the run goes on to the next one.

    report = verify_models(["Qwen/Qwen3-Reranker-0.6B"], ServeOptions(port=8100))
    report["passed"]
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rerank_kit import launcher
from rerank_kit._contract import VLLM_API_KEY_ENV
from rerank_kit.bench.runner import BenchConfig
from rerank_kit.bench.sweep import run_level, workload_for
from rerank_kit.client import RerankClient
from rerank_kit.launcher.selfcheck import SelfCheckReport, check_command
from rerank_kit.launcher.verify import verify_server

# The models a GPU box should prove: one per family that needs rerank-kit's help to score right.
GPU_MODELS = ("mixedbread-ai/mxbai-rerank-base-v2", "Qwen/Qwen3-Reranker-0.6B", "BAAI/bge-reranker-v2-m3")


def verify_model(
    model: str,
    options: launcher.ServeOptions,
    *,
    family: str | None = None,
    tolerance: float = 0.02,
    bench_requests: int = 100,
    concurrency: int = 16,
    timeout: float = launcher.DEFAULT_START_TIMEOUT,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """One model: serve, self-check, verify, bench, stop. Never raises for the model's own failures."""
    row: dict[str, Any] = {"model": model, "passed": False}
    started = time.monotonic()
    record = None
    try:
        [command] = launcher.commands_for(model, family, options)
        row["command"] = command.shell()
        row["notes"] = list(command.notes)
        checks: list[SelfCheckReport] = []
        say(f"{model}: starting on {command.url}")
        record = launcher.start_daemon(command, timeout=timeout, check=lambda c: checks.append(check_command(c)))
        row["start_seconds"] = round(time.monotonic() - started, 1)
        row["self_check"] = checks[0].summary()
        say(f"{model}: {row['self_check']}; verifying against the reference")
        key = command.environ({}).get(VLLM_API_KEY_ENV)
        with RerankClient(command.url, api_key=key) as client:
            report = verify_server(client, command.recipe, tolerance=tolerance, model=command.model_name)
        row["verify"] = {k: v for k, v in dataclasses.asdict(report).items() if k != "rows"} | {"passed": report.passed}
        say(f"{model}: max |Δscore| {report.max_abs:.2e}; benchmarking {bench_requests} requests")
        config = BenchConfig(
            urls=[command.url],
            api_key=key,
            model=command.model_name,
            concurrency=concurrency,
            requests=bench_requests,
        )
        bench = run_level(config, workload_for(config))
        row["bench"] = {"summary": bench["summary"], "server": bench["server"], "machine": bench["machine"]}
        row["passed"] = report.passed and not bench["summary"]["errors"]
    except Exception as exc:  # recorded, and the next model still runs
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=5)
        say(f"{model}: FAILED: {row['error'].splitlines()[0]}")
    finally:
        if record is not None:
            launcher.stop_daemon(record.port)
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


def verify_models(
    models: Sequence[str] = GPU_MODELS,
    options: launcher.ServeOptions | None = None,
    *,
    family: str | None = None,
    say: Callable[[str], None] = lambda _: None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Each of ``models`` in turn (one server at a time); the report has a row per model."""
    options = options or launcher.ServeOptions()
    rows = [verify_model(m, options, family=family, say=say, **kwargs) for m in models]
    return {
        "rerank_kit_vllm": launcher.vllm_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "passed": all(r["passed"] for r in rows),
        "models": rows,
    }
