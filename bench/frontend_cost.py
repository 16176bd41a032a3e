"""The API server's cost per pair, with the engine out of the way (issue "performance", item 1).

On a GPU the model is cheap and what remains is vLLM's API server: one Python process that validates the
request, renders each pair's prompt, tokenizes it, hands it to the engine and builds the answer. This
measures that process alone:

- a tiny model of each family (tests/tiny_models.py: the real vocabularies, a few small layers), so the
  engine's forward costs little;
- the API server process pinned to CPU 0, the engine core and this load generator to CPU 1;
- the API server's CPU time (all its threads, from /proc) over a closed-loop run, minus what it spends
  idle over the same time (measured just before, with no requests), divided by the pairs it served:
  microseconds per pair, and 1e6 / that = pairs/s per API-server core.

Ways to serve each family, same model, same template, same flags otherwise:
  vllm        vLLM's own path: no rerank-kit plugin (VLLM_PLUGINS=""), no guard middleware
  rerank-kit  rerank-kit's recipe as `rerank-kit serve` starts it (plugin + guard)
  before      the same, with the plugin and guard of an earlier rerank-kit checkout (--before DIR: a git
              worktree, e.g. `git worktree add /tmp/rk-before 601898b`), put first on the server's PYTHONPATH

``--profile`` adds a py-spy profile of the API server per configuration, folded into stages (template
render, tokenization, request parsing and validation, guard, engine hand-off, response, event loop).
``--breakdown`` adds the API server's CPU time per pair in named functions (bench/api_probe: each wrapped, its
calls' thread CPU time summed), exact where a profile samples; the functions are listed there.

    .venv/bin/python bench/frontend_cost.py --rounds 2 --duration 20 --profile \\
        --out bench/results/frontend_cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rerank_kit import launcher  # noqa: E402
from rerank_kit.bench.runner import BenchConfig, run_bench  # noqa: E402
from rerank_kit.bench.workloads import random_workload  # noqa: E402
from rerank_kit.launcher import machine  # noqa: E402
from rerank_kit.recipes import get_recipe  # noqa: E402

OUT = ROOT / "bench" / "out"
# A text-pair cross-encoder (XLM-R, the bge-reranker shape), and the two template families. All tiny: the
# engine must keep up with the API server, or the server idles and its background work dominates.
FAMILIES = ("bge-reranker", "qwen3-reranker", "mxbai-rerank-v2")
# The tiny XLM-R's tokenizer (trained here on a small corpus) splits random words into ~4 tokens: 40
# words keep its pairs (~170 tokens) inside its 512 positions, as vLLM's own path does not truncate.
DOC_WORDS = {"bge-reranker": 40}
IDLE_SECONDS = 5.0
MODES = ("vllm", "rerank-kit", "before")
API_CPU, ENGINE_CPU = 0, 1
# --breakdown: bench/api_probe/sitecustomize.py on the server's PYTHONPATH, told where to write by PROBE_ENV
PROBE_DIR = ROOT / "bench" / "api_probe"
PROBE_ENV = "RERANK_KIT_BENCH_PROBE"
PROBE_SECONDS = 1.0  # how often it writes its totals

# py-spy frames -> stage. First match wins, checked from the innermost frame outwards, so a tokenizer
# call inside the template path counts as tokenization.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "tokenization",
        ("tokenizers", "tokenization_utils", "_batch_encode_plus", "_encode_plus", "encode_batch", "_rust_encodings"),
    ),
    ("template render", ("jinja2", "chat_utils", "apply_chat_template", "safe_apply_chat_template")),
    ("guard", ("rerank_kit/server/guard", "rerank_kit/server/bodycheck", "rerank_kit/server/normalize")),
    ("rerank-kit plugin", ("rerank_kit/server/plugin",)),
    ("engine hand-off", ("engine/async_llm", "core_client", "output_processor", "input_processor", "zmq", "msgspec")),
    ("request parsing/validation", ("pydantic", "protocol.py", "fastapi/routing", "json/decoder", "orjson")),
    ("response", ("_build_response", "responses.py", "json/encoder", "_request_output_to")),
    ("scoring io", ("io_processor", "scoring/utils", "pooling/base")),
    ("http server", ("uvicorn", "starlette", "h11", "httptools")),
    ("event loop", ("asyncio", "uvloop", "selectors")),
)


def family_model(family: str) -> Path:
    import tiny_models

    return tiny_models.build(family, OUT / "models")


def command_for(family: str, mode: str, port: int, before: Path | None = None) -> launcher.Command:
    recipe = get_recipe(str(family_model(family)), family=family)
    options = launcher.ServeOptions(port=port, eager=True, dtype="float32", kv_cache_gib=1.0, max_in_flight=0)
    command = launcher.build_command(recipe, options, vllm_version=launcher.vllm_version(), machine=machine.detect())
    if mode == "rerank-kit":
        return command
    if mode == "before":
        if before is None:
            raise SystemExit("mode 'before' needs --before DIR (a checkout of the earlier rerank-kit)")
        return command.with_args(env={**command.env, "PYTHONPATH": str(before / "src")})
    args = list(command.server_args)
    at = args.index("--middleware")
    del args[at : at + 2]
    head = command.argv[: len(command.argv) - len(command.server_args)]
    env = {**command.env, "VLLM_PLUGINS": ""}
    return dataclasses.replace(command, argv=[*head, *args], server_args=tuple(args), env=env)


def pin(api_pid: int) -> psutil.Process:
    """API server (every thread) on API_CPU; its children (engine core, workers) and us on ENGINE_CPU."""
    api = psutil.Process(api_pid)
    for thread in api.threads():
        os.sched_setaffinity(thread.id, {API_CPU})
    for child in api.children(recursive=True):
        for thread in child.threads():
            os.sched_setaffinity(thread.id, {ENGINE_CPU})
    os.sched_setaffinity(0, {ENGINE_CPU})
    return api


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def fold_profile(raw: Path) -> dict[str, float]:
    """py-spy's raw (collapsed) output -> share of the API server's busy samples per stage."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if any("idle" in f for f in frames[-1:]) or frames[-1].startswith(("select ", "epoll", "poll ")):
            continue
        stage = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in STAGES if any(k in frame for k in keys)), None)
            if hit:
                stage = hit
                break
        counts[stage] += int(n)
    total = sum(counts.values()) or 1
    return {stage: round(n / total, 3) for stage, n in counts.most_common()}


def measure(
    family: str,
    mode: str,
    duration: float,
    workload,
    concurrency: int,
    profile: bool,
    before: Path | None,
    gil: bool = False,
    breakdown: bool = False,
) -> dict:
    port = launcher.free_port()
    command = command_for(family, mode, port, before)
    probe = OUT / f"probe-{family}-{mode}"
    if breakdown:
        for old in OUT.glob(f"{probe.name}.*"):
            old.unlink()
        path = [str(PROBE_DIR), *filter(None, [command.env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))])]
        command = command.with_args(env={**command.env, "PYTHONPATH": ":".join(path), PROBE_ENV: str(probe)})
    log = OUT / "logs" / f"frontend-{family}-{mode}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    config = BenchConfig(urls=[command.url], concurrency=concurrency, duration=duration, warmup=0)
    with launcher.serving(command, log_path=log, timeout=900) as proc:
        api = pin(proc.pid)
        warm = dataclasses.replace(config, duration=min(5.0, duration))
        asyncio.run(run_bench(warm, workload=workload))
        spy = None
        if profile:
            raw = OUT / f"frontend-{family}-{mode}.pyspy"
            spy = subprocess.Popen(
                [pyspy(), "record", "--pid", str(proc.pid), "--duration", str(int(duration)), "--rate", "500",
                 "--format", "raw", "--nonblocking", "--output", str(raw), *(["--gil"] if gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        idle_before = cpu_seconds(api)
        time.sleep(IDLE_SECONDS)
        idle_rate = (cpu_seconds(api) - idle_before) / IDLE_SECONDS
        api_before, engine_before = cpu_seconds(api), sum(cpu_seconds(c) for c in api.children(recursive=True))
        window = (time.time(), 0.0)
        report = asyncio.run(run_bench(config, workload=workload))
        window = (window[0], time.time())
        if breakdown:
            time.sleep(PROBE_SECONDS + 0.5)  # the probe's first snapshot after the window, before the server stops
        api_cpu = cpu_seconds(api) - api_before - idle_rate * report["summary"]["duration_s"]
        engine_cpu = sum(cpu_seconds(c) for c in api.children(recursive=True)) - engine_before
        stages = None
        if spy is not None:
            spy.wait(timeout=duration + 60)
            stages = fold_profile(raw) if raw.exists() else None
    s = report["summary"]
    pairs = s["pairs_per_s"] * s["duration_s"]
    if not pairs or s["ok"] == 0:
        raise RuntimeError(f"{family}/{mode}: no pairs served; see {log}")
    us_per_pair = api_cpu / pairs * 1e6
    return {
        "family": family,
        "mode": mode,
        "pairs_per_s": round(s["pairs_per_s"], 1),
        "errors": s.get("errors", {}),
        "api_cpu_busy": round(api_cpu / s["duration_s"], 3),
        "api_idle_cpu": round(idle_rate, 4),
        "api_us_per_pair": round(us_per_pair, 1),
        "pairs_per_s_per_api_core": round(1e6 / us_per_pair, 1),
        "engine_us_per_pair": round(engine_cpu / pairs * 1e6, 1),
        "stages": stages,
        "breakdown": per_pair(Path(f"{probe}.{proc.pid}"), window, pairs) if breakdown else None,
    }


def per_pair(snapshots: Path, window: tuple[float, float], pairs: float) -> dict[str, dict[str, float]]:
    """The probe's totals over the measured window (its last snapshot before, its first after; the server idles on
    either side) -> calls and µs of CPU per pair served, per function, most first."""
    rows = [json.loads(line) for line in snapshots.read_text().splitlines()] if snapshots.exists() else []
    before = [r for r in rows if r["t"] <= window[0]]
    after = [r for r in rows if r["t"] >= window[1]]
    if not before or not after:
        return {}
    start, end = before[-1]["totals"], after[0]["totals"]
    deltas = {k: (n - start.get(k, [0, 0.0])[0], t - start.get(k, [0, 0.0])[1]) for k, (n, t) in end.items()}
    return {
        k: {"calls_per_pair": round(n / pairs, 3), "us_per_pair": round(t / pairs * 1e6, 1)}
        for k, (n, t) in sorted(deltas.items(), key=lambda kv: -kv[1][1])
        if n
    }


def pyspy() -> str:
    found = shutil.which("py-spy") or (str(Path(sys.executable).with_name("py-spy")))
    if not Path(found).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--modes", nargs="+", default=["vllm", "rerank-kit"], choices=MODES)
    parser.add_argument("--before", type=Path, help="an earlier rerank-kit checkout, for --modes ... before")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--docs", type=int, default=64, help="documents per request")
    parser.add_argument("--doc-tokens", type=int, default=120)
    parser.add_argument("--profile", action="store_true", help="py-spy profile of the API server, folded by stage")
    parser.add_argument(
        "--gil", action="store_true",
        help="with --profile: sample only the thread holding the GIL (a thread waiting for it is not counted busy)",
    )  # fmt: skip
    parser.add_argument(
        "--breakdown", action="store_true", help="CPU µs per pair in named functions of the API server (api_probe/)"
    )
    parser.add_argument("--out", type=Path, default=OUT / "frontend_cost.json")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 CPUs: the API server on one, the engine and the load generator on the other")
    workloads = {
        family: random_workload(
            cases=32, docs_per_request=args.docs, doc_tokens=DOC_WORDS.get(family, args.doc_tokens), query_tokens=10
        )
        for family in args.families
    }
    runs = []
    for r in range(args.rounds):
        for family in args.families:
            for mode in args.modes:
                print(f"round {r + 1}/{args.rounds}: {family} / {mode} ...", flush=True)
                result = measure(
                    family,
                    mode,
                    args.duration,
                    workloads[family],
                    args.concurrency,
                    args.profile,
                    args.before,
                    args.gil,
                    args.breakdown,
                )
                result["round"] = r + 1
                print("  " + json.dumps(result), flush=True)
                runs.append(result)
    summary = {}
    for family in args.families:
        per_mode = {}
        for mode in args.modes:
            mine = [x for x in runs if x["family"] == family and x["mode"] == mode]
            per_mode[mode] = {
                "api_us_per_pair": statistics.median(x["api_us_per_pair"] for x in mine),
                "pairs_per_s_per_api_core": statistics.median(x["pairs_per_s_per_api_core"] for x in mine),
                "rounds": [x["api_us_per_pair"] for x in mine],
            }
        for mode in ("rerank-kit", "before"):
            if {"vllm", mode} <= per_mode.keys():
                per_mode[f"ratio_{mode}_over_vllm"] = round(
                    per_mode[mode]["pairs_per_s_per_api_core"] / per_mode["vllm"]["pairs_per_s_per_api_core"], 2
                )
        summary[family] = per_mode
    result = {
        "machine": dataclasses.asdict(machine.detect()),
        "vllm": launcher.vllm_version(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
