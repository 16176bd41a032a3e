"""Time to healthy for the default model, first start and repeat start, per start setting (issues 14 and 25).

`rerank-kit up` with no model on a CPU serves the packaged all-MiniLM-L6-v2 with torch.compile. vLLM saves the
compiled model under VLLM_CACHE_ROOT and tries to load it on the next start; on vLLM 0.32 with torch 2.13 that
load fails ("'function' object has no attribute 'finalize_loading'"), so rerank-kit sets
VLLM_USE_AOT_COMPILE=0 and the repeat start reuses Inductor's cache (issue 14). Issue 25: vLLM's CPU platform
spawns its engine core, a new interpreter that imports vLLM again; rerank-kit's launcher forks it instead where
Intel OpenMP is preloaded (RERANK_KIT_ENGINE_START=fork, rerank_kit.server.engine_start). Each setting gets its
own empty cache directory, is started twice (first start fills the cache, the repeat start should use it), and
is then measured for throughput, because a setting that starts fast but serves slower is no win. Each start's
log gives its steps: spawn to the API server's first line (imports), to the engine core's first line (its
start), to healthy.

  compiled                          rerank-kit's defaults (engine core forked where Intel OpenMP is preloaded)
  compiled, engine core spawned     the same with RERANK_KIT_ENGINE_START=spawn (vLLM's own start)
  eager / eager, spawned            --enforce-eager: no compile at all
  compiled, VLLM_USE_AOT_COMPILE=1  vLLM's AOT compile (its "mega" artefact), as issue 14 measured it

    .venv/bin/python bench/warm_start.py --rounds 1 --duration 30 --out bench/results/warm_start.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from rerank_kit import launcher
from rerank_kit._contract import ENGINE_START_ENV
from rerank_kit.bench.runner import BenchConfig, run_bench
from rerank_kit.bench.workloads import random_workload
from rerank_kit.launcher import machine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SPAWNED = {ENGINE_START_ENV: "spawn"}
SETTINGS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "compiled": ({}, ()),
    "compiled, engine core spawned": (SPAWNED, ()),
    "eager": ({}, ("--enforce-eager",)),
    "eager, engine core spawned": (SPAWNED, ("--enforce-eager",)),
    "compiled, VLLM_USE_AOT_COMPILE=1": ({"VLLM_USE_AOT_COMPILE": "1"}, ()),
}
DEFAULT_SETTINGS = list(SETTINGS)[:4]
# "(APIServer pid=12) INFO 12-06 03:44:11 [...]": the process and its clock, to the second
LOG_LINE = re.compile(r"^\((\w+) pid=\d+\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d) ", re.MULTILINE)
LOAD_FAILED = "Compiling model again due to a load failure"
LOADED = "Directly load AOT compilation"


def default_command(port: int) -> launcher.Command:
    (command,) = launcher.commands_for(None, None, launcher.ServeOptions(port=port))
    return command


def steps(text: str, spawned_at: float) -> dict[str, int]:
    """Seconds (whole: vLLM's log clock) from spawn to each process's first log line."""
    first: dict[str, int] = {}
    for process, clock in LOG_LINE.findall(text):
        seen = time.mktime(time.strptime(f"{time.localtime(spawned_at).tm_year}-{clock}", "%Y-%m-%d %H:%M:%S"))
        first.setdefault(process, round(seen - spawned_at))
    return {f"{p}_first_line_s": s for p, s in first.items() if p in ("APIServer", "EngineCore")}


def start(command: launcher.Command, log: Path) -> tuple[float, subprocess.Popen]:
    """Seconds from spawn to healthy, and the running process."""
    t0 = time.perf_counter()
    proc = launcher.spawn(command, log)
    try:
        launcher.wait_healthy(command.url, timeout=900, alive=lambda: proc.poll() is None, log_path=log)
        healthy = time.perf_counter() - t0
        return healthy, proc
    except BaseException:
        launcher.stop_process_group(proc.pid)
        raise


def throughput(command: launcher.Command, duration: float) -> float:
    workload = random_workload(cases=32, docs_per_request=100, doc_tokens=120)
    config = BenchConfig(urls=[command.url], concurrency=4, duration=duration, warmup=2, model=command.model_name)
    report = asyncio.run(run_bench(config, workload=workload))
    return report["summary"]["pairs_per_s"]


def measure(name: str, duration: float) -> dict:
    env, args = SETTINGS[name]
    cache = Path(tempfile.mkdtemp(prefix="vllm-cache-", dir=OUT))
    result: dict = {"setting": name}
    for attempt in ("first", "repeat"):
        command = default_command(launcher.free_port())
        command = command.with_args(*args, env={**command.env, **env, "VLLM_CACHE_ROOT": str(cache)})
        log = OUT / "logs" / f"warm-{list(SETTINGS).index(name)}-{attempt}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        spawned_at = time.time()
        healthy, proc = start(command, log)
        try:
            text = log.read_text(errors="replace")
            result[f"{attempt}_start_s"] = round(healthy, 1)
            result[f"{attempt}_steps"] = steps(text, spawned_at)
            result[f"{attempt}_cache_loaded"] = LOADED in text
            result[f"{attempt}_cache_load_failed"] = LOAD_FAILED in text
            if attempt == "repeat" and duration > 0:
                result["pairs_per_s"] = round(throughput(command, duration), 1)
        finally:
            launcher.stop_process_group(proc.pid)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of throughput after the repeat start")
    parser.add_argument("--out", type=Path, default=OUT / "warm_start.json")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs = []
    for r in range(args.rounds):
        for name in args.settings:
            print(f"round {r + 1}: {name} ...", flush=True)
            row = {**measure(name, args.duration), "round": r + 1}
            print("  " + json.dumps(row), flush=True)
            runs.append(row)
    summary = {
        name: {
            key: statistics.median(x[key] for x in runs if x["setting"] == name and key in x)
            for key in ("first_start_s", "repeat_start_s", "pairs_per_s")
            if any(key in x for x in runs if x["setting"] == name)
        }
        for name in args.settings
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "vllm": launcher.vllm_version(),
                "machine": {
                    k: sorted(v) if isinstance(v, frozenset) else v
                    for k, v in dataclasses.asdict(machine.detect()).items()
                },
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
