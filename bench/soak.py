"""Soak: concurrency 64 for 10 minutes against a vLLM server started by rerank-kit on this machine.

Records errors, latency percentiles per minute and the server's memory (RSS of its whole process
group) every 10 s, to show that nothing leaks or degrades over time. Not part of CI (it takes the
machine for 10+ minutes); results go to bench/RESULTS.md.

    .venv/bin/python bench/soak.py --duration 600 --concurrency 64 --out bench/results/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rerank_kit import launcher  # noqa: E402
from rerank_kit.bench.loadgen import LoadConfig, run_load  # noqa: E402
from rerank_kit.bench.metrics import percentile, summarize  # noqa: E402
from rerank_kit.bench.workloads import random_workload  # noqa: E402
from rerank_kit.client import AsyncRerankClient  # noqa: E402
from rerank_kit.launcher import machine  # noqa: E402
from rerank_kit.recipes import get_recipe  # noqa: E402


def group_rss_mib(pgid: int) -> float:
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()

    import tiny_models

    path = tiny_models.build("ms-marco-cross-encoder", ROOT / "bench" / "out" / "models")
    recipe = get_recipe(str(path), family="ms-marco-cross-encoder")
    command = launcher.build_command(
        recipe,
        launcher.ServeOptions(port=launcher.free_port()),
        vllm_version=launcher.vllm_version(),
        machine=machine.detect(),
    )
    workload = random_workload(cases=256, docs_per_request=args.docs, doc_tokens=120, seed=1)
    memory: list[tuple[float, float]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with launcher.serving(command, log_path=ROOT / "bench" / "out" / "soak-server.log", timeout=900) as proc:
        stop = threading.Event()
        start = time.perf_counter()

        def sample_memory() -> None:
            while not stop.is_set():
                memory.append((time.perf_counter() - start, group_rss_mib(proc.pid)))
                stop.wait(10)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()

        async def run():
            async with AsyncRerankClient(command.url, timeout=300) as client:
                return await run_load(
                    client, workload, LoadConfig(concurrency=args.concurrency, duration=args.duration, warmup=16)
                )

        result = asyncio.run(run())
        stop.set()
        sampler.join()
    t0 = min(s.intended for s in result.samples)
    minutes: dict[int, list] = {}
    for s in result.samples:
        minutes.setdefault(int((s.finished - t0) // 60), []).append(s)
    per_minute = []
    for minute, samples in sorted(minutes.items()):
        lat = [s.latency * 1000 for s in samples if s.ok]
        per_minute.append(
            {
                "minute": minute,
                "requests": len(samples),
                "errors": sum(not s.ok for s in samples),
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "max_ms": max(lat, default=0),
            }
        )
    report = {
        "command": command.shell(),
        "concurrency": args.concurrency,
        "docs_per_request": args.docs,
        "summary": summarize(result),
        "per_minute": per_minute,
        "rss_mib": [{"t_s": round(t), "rss_mib": round(m)} for t, m in memory],
    }
    args.out.write_text(json.dumps(report, indent=2))
    s = report["summary"]
    print(
        f"{s['ok']} ok, errors {s['errors'] or 0}, {s['requests_per_s']:.2f} req/s, "
        f"p50 {s['latency_ms']['p50']:.0f} ms, p99 {s['latency_ms']['p99']:.0f} ms"
    )
    print("| minute | requests | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
    for row in per_minute:
        print(
            f"| {row['minute']} | {row['requests']} | {row['errors']} | {row['p50_ms']:.0f} "
            f"| {row['p99_ms']:.0f} | {row['max_ms']:.0f} |"
        )
    if memory:
        print(
            f"server RSS: first {memory[0][1]:.0f} MiB, max {max(m for _, m in memory):.0f} MiB, "
            f"last {memory[-1][1]:.0f} MiB"
        )


if __name__ == "__main__":
    main()
