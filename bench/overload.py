"""Overload: 256 requests in flight against a server bounded at 32 (admission control), and unbounded.

For each setting, a fresh server is started by rerank-kit's launcher (the MiniLM-shaped cross-encoder
of the other CPU benchmarks) and two loads run one after the other:

1. raw: 256 concurrent httpx clients sending requests back to back for --duration seconds, waiting
   Retry-After after a 429: how many were accepted (200) or shed (429), and the latency of the
   accepted ones (what a burst costs the requests the server takes);
2. client: `rerank-kit bench` (rerank-kit's load generator and AsyncRerankClient, which honours 429
   and Retry-After) at concurrency 256 for --requests requests: lost requests and end-to-end latency.

Results go to bench/RESULTS.md. Not part of CI (it takes the machine for ~10 minutes).

    .venv/bin/python bench/overload.py --out bench/results/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rerank_kit import launcher  # noqa: E402
from rerank_kit.bench.metrics import percentile  # noqa: E402
from rerank_kit.bench.runner import BenchConfig  # noqa: E402
from rerank_kit.bench.sweep import run_level, workload_for  # noqa: E402
from rerank_kit.launcher import machine  # noqa: E402
from rerank_kit.recipes import get_recipe  # noqa: E402


async def raw_load(url: str, model: str, concurrency: int, duration: float, docs: list[str]) -> dict:
    """``concurrency`` workers, no retries: each request is either accepted (200) or shed (429)."""
    accepted: list[float] = []
    shed = errors = 0
    retry_after: list[float] = []
    body = {"model": model, "query": "What is PagedAttention?", "documents": docs}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        end = time.monotonic() + duration

        async def worker() -> None:
            nonlocal shed, errors
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    response = await http.post(f"{url}/v1/rerank", json=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if response.status_code == 200:
                    accepted.append(time.monotonic() - started)
                elif response.status_code == 429:
                    shed += 1
                    retry_after.append(float(response.headers.get("retry-after", "0")))
                    await asyncio.sleep(retry_after[-1])  # a well-behaved client comes back when told
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "accepted": len(accepted),
        "shed_429": shed,
        "errors": errors,
        "accepted_p50_s": round(percentile(accepted, 50), 3) if accepted else None,
        "accepted_p99_s": round(percentile(accepted, 99), 3) if accepted else None,
        "accepted_max_s": round(max(accepted), 3) if accepted else None,
        "retry_after_median_s": percentile(retry_after, 50) if retry_after else None,
    }


def run_setting(path: Path, bound: int, args: argparse.Namespace) -> dict:
    recipe = get_recipe(str(path), family="ms-marco-cross-encoder")
    options = launcher.ServeOptions(port=launcher.free_port(), max_in_flight=bound)
    command = launcher.build_command(recipe, options, vllm_version=launcher.vllm_version(), machine=machine.detect())
    log = ROOT / "bench" / "out" / f"overload-{bound}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    docs = [f"Document {i}: PagedAttention stores attention keys and values in pages of memory." for i in range(20)]
    with launcher.serving(command, log_path=log, timeout=600):
        print(f"bound {bound or 'none'}: raw load", file=sys.stderr)
        raw = asyncio.run(raw_load(command.url, command.model_name, args.concurrency, args.duration, docs))
        print(f"bound {bound or 'none'}: rerank-kit bench", file=sys.stderr)
        config = BenchConfig(
            urls=[command.url],
            model=command.model_name,
            concurrency=args.concurrency,
            requests=args.requests,
            docs_per_request=20,
            doc_tokens=20,
            warmup=0,
        )
        bench = run_level(config, workload_for(config))
    summary = bench["summary"]
    return {
        "bound": bound,
        "raw": raw,
        "client": {
            "requests": summary["requests"],
            "ok": summary["ok"],
            "errors": summary["errors"],
            "retries": bench["retries"],
            "latency_ms": summary["latency_ms"],
            "requests_per_s": summary["requests_per_s"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--bound", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    args = parser.parse_args()
    import tiny_models

    path = tiny_models.build("ms-marco-cross-encoder", ROOT / "bench" / "out" / "models")
    results = {
        "command": " ".join(sys.argv),
        "machine": machine.detect().__dict__ | {"cpu_flags": None},
        "concurrency": args.concurrency,
        "settings": [run_setting(path, bound, args) for bound in (args.bound, 0)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results["settings"], indent=2, default=str))


if __name__ == "__main__":
    main()
