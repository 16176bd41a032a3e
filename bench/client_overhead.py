"""What rerank-kit's client costs per request, against a bare httpx call with the same payload.

All send the same /v1/rerank request (a query and 100 documents of ~120 words) to a minimal local
endpoint that answers instantly (bench/minimal_endpoint.py), one request at a time, in alternating
blocks so that machine noise hits all equally. The client's extra work: validating the input,
deduplicating documents, parsing the response into typed results with the caller's documents
attached, and sorting. The client encodes and decodes JSON with orjson, so two baselines: a bare
httpx call as people write it (`json=`, `.json()`: the json module), and a bare httpx call with
orjson too, which isolates the client's own logic.

    .venv/bin/python bench/client_overhead.py --requests 3000 --out bench/results/client_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rerank_kit import AsyncRerankClient, RerankClient  # noqa: E402
from rerank_kit.bench.metrics import percentile  # noqa: E402
from rerank_kit.bench.workloads import random_workload  # noqa: E402
from rerank_kit.launcher import free_port, wait_healthy  # noqa: E402

JSON = {"content-type": "application/json"}
BARE_ORJSON_ASYNC = "bare httpx.AsyncClient.post + orjson"
BARE_ORJSON_SYNC = "bare httpx.Client.post + orjson"


async def measure_async(url: str, query: str, docs: list[str], requests: int, block: int) -> dict[str, list[float]]:
    payload = {"model": "minimal", "query": query, "documents": docs}
    async with httpx.AsyncClient(timeout=30) as bare, AsyncRerankClient(url, model="minimal") as client:

        async def plain() -> None:
            (await bare.post(f"{url}/v1/rerank", json=payload)).json()

        async def fast() -> None:
            r = await bare.post(f"{url}/v1/rerank", content=orjson.dumps(payload), headers=JSON)
            orjson.loads(r.content)

        async def ours() -> None:
            await client.rerank(query, docs)

        calls = {"bare httpx.AsyncClient.post": plain, BARE_ORJSON_ASYNC: fast, "AsyncRerankClient.rerank": ours}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():  # warm the connection pools
            for _ in range(20):
                await call()
        for start in range(0, requests, block):
            for name, call in calls.items():
                for _ in range(min(block, requests - start)):
                    t = time.perf_counter()
                    await call()
                    times[name].append(time.perf_counter() - t)
    return times


def measure_sync(url: str, query: str, docs: list[str], requests: int, block: int) -> dict[str, list[float]]:
    payload = {"model": "minimal", "query": query, "documents": docs}
    with httpx.Client(timeout=30) as bare, RerankClient(url, model="minimal") as client:
        calls = {
            "bare httpx.Client.post": lambda: bare.post(f"{url}/v1/rerank", json=payload).json(),
            BARE_ORJSON_SYNC: lambda: orjson.loads(
                bare.post(f"{url}/v1/rerank", content=orjson.dumps(payload), headers=JSON).content
            ),
            "RerankClient.rerank": lambda: client.rerank(query, docs),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():
            for _ in range(20):
                call()
        for start in range(0, requests, block):
            for name, call in calls.items():
                for _ in range(min(block, requests - start)):
                    t = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "client_overhead.json")
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "minimal_endpoint.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=30, alive=lambda: server.poll() is None)
        case = random_workload(cases=1, docs_per_request=args.docs, doc_tokens=120, seed=0).cases[0]
        times = asyncio.run(measure_async(url, case.query, case.documents, args.requests, args.block))
        times |= measure_sync(url, case.query, case.documents, args.requests, args.block)
    finally:
        server.terminate()
        server.wait(timeout=10)

    rows = {
        name: {
            "p50_ms": percentile(t, 50) * 1000,
            "p90_ms": percentile(t, 90) * 1000,
            "mean_ms": statistics.mean(t) * 1000,
            "n": len(t),
        }
        for name, t in times.items()
    }
    ratios = {
        "async p50 ratio (client / bare)": rows["AsyncRerankClient.rerank"]["p50_ms"]
        / rows["bare httpx.AsyncClient.post"]["p50_ms"],
        "sync p50 ratio (client / bare)": rows["RerankClient.rerank"]["p50_ms"]
        / rows["bare httpx.Client.post"]["p50_ms"],
        "async p50 ratio (client / bare + orjson)": rows["AsyncRerankClient.rerank"]["p50_ms"]
        / rows[BARE_ORJSON_ASYNC]["p50_ms"],
        "sync p50 ratio (client / bare + orjson)": rows["RerankClient.rerank"]["p50_ms"]
        / rows[BARE_ORJSON_SYNC]["p50_ms"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"docs_per_request": args.docs, "rows": rows, "ratios": ratios}, indent=2))
    print(f"| call ({args.docs} docs, sequential) | p50 ms | p90 ms | mean ms |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | {row['mean_ms']:.3f} |")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
