"""Memory and latency of requests that each carry a new instruction (issue 22, item 4).

A multi-tenant application may put a per-user task in `instruction`. Before the skeleton cache was bounded,
each distinct instruction added an entry to the plugin's template-shape cache and rendered the template with
probe texts again: the API server grew without bound. This starts a tiny Qwen3-Reranker server with rerank-kit's
launcher (float32, eager), sends --requests requests one after another, each with a new instruction, and reads
the API server process's RSS (/proc/PID/status VmRSS) every --every requests; then it times requests with a new
instruction against requests that repeat one, interleaved, in the same run.

--src runs the server with another checkout's rerank_kit on PYTHONPATH (e.g. a worktree of the commit before the
change), for a before/after in one run on one machine:

    .venv/bin/python bench/instruction_memory.py --out bench/results/instruction_memory.json
    .venv/bin/python bench/instruction_memory.py --src /tmp/old/src --out bench/results/instruction_memory-before.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402
from rerank_kit import launcher  # noqa: E402
from rerank_kit.launcher import machine  # noqa: E402
from rerank_kit.recipes import get_recipe  # noqa: E402

DOCUMENTS = ["vLLM is an inference engine.", "Paris is the capital of France.", "Bread needs flour and water."]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def rerank(http: httpx.Client, url: str, instruction: str) -> float:
    started = time.perf_counter()
    body = {"query": "What is vLLM?", "documents": DOCUMENTS, "instruction": instruction}
    response = http.post(f"{url}/v1/rerank", json=body)
    response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000)
    parser.add_argument("--timing-pairs", type=int, default=500)
    parser.add_argument("--src", type=Path, help="another checkout's src/ for the server (before/after)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model = tiny_models.build("qwen3-reranker", ROOT / "bench" / "out" / "tiny-models")
    recipe = get_recipe(str(model), family="qwen3-reranker")
    options = launcher.ServeOptions(port=launcher.free_port(), eager=True, dtype="float32", kv_cache_gib=0.5)
    command = launcher.build_command(recipe, options, vllm_version=launcher.vllm_version(), machine=machine.detect())
    if args.src:
        command.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.src), os.environ.get("PYTHONPATH")]))
    log = ROOT / "bench" / "out" / "instruction-memory-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    samples: list[dict] = []
    with launcher.serving(command, log_path=log, timeout=600) as proc, httpx.Client(timeout=60) as http:
        rerank(http, command.url, "warm-up")
        samples.append({"requests": 0, "rss_mib": rss_mib(proc.pid)})
        started = time.monotonic()
        for i in range(1, args.requests + 1):
            rerank(http, command.url, f"Tenant {i}: find the passage that answers the question")
            if i % args.every == 0:
                samples.append({"requests": i, "rss_mib": rss_mib(proc.pid)})
                print(f"{i} requests, RSS {samples[-1]['rss_mib']:.1f} MiB", file=sys.stderr)
        elapsed = time.monotonic() - started
        new, repeated = [], []
        for i in range(args.timing_pairs):
            new.append(rerank(http, command.url, f"A task never seen before, number {i}"))
            repeated.append(rerank(http, command.url, "The same task every time"))
    first = next(s for s in samples if s["requests"] == args.every)
    report = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": sorted(f for f in machine.detect().cpu_flags if f in ("avx512_bf16", "amx_tile", "avx512f")),
        "server_src": str(args.src) if args.src else "this checkout",
        "requests": args.requests,
        "requests_per_s": round(args.requests / elapsed, 1),
        "rss": samples,
        "rss_growth_mib_from_1000_to_last": round(samples[-1]["rss_mib"] - first["rss_mib"], 1),
        "latency_ms_new_instruction_p50": round(statistics.median(new) * 1000, 2),
        "latency_ms_repeated_instruction_p50": round(statistics.median(repeated) * 1000, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss"}, indent=2))


if __name__ == "__main__":
    main()
