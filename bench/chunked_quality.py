"""Long documents: retrieval quality and cost of truncation against windows (server.chunking), on TREC DL 2019.

Two datasets, one run each: ../shared/data/beir/msmarco-dl19-5k as it is (MS MARCO passages, ~90 tokens) and its
long-document variant (every passage at a random position among 7 passages no query judges, ~600 tokens;
built by ``python -m rerank_kit.bench.long_documents``, seeded). On each: BM25 top-100 alone, reranked by the
default model (all-MiniLM-L6-v2, --max-model-len 256, as `rerank-kit up` serves it on this CPU) with truncation
(max_chunks_per_doc=1) and with windows (2, 4, 8), and 8 windows with 0, 12 and 25 % overlap (a server each).
nDCG@10, pairs scored, p50/p99 latency and pairs/s come from `rerank-kit bench` (concurrency 4, one pass).

    python bench/chunked_quality.py            # about 10 minutes on 2 cores
    python bench/chunked_quality.py --quick    # the long variant only, default overlap

Writes bench/results/chunked_quality.json and prints the table for bench/RESULTS.md section 10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DL19 = ROOT.parent / "shared" / "data" / "beir" / "msmarco-dl19-5k"
LONG = ROOT / "bench" / "out" / "long-dl19"
OUT = ROOT / "bench" / "results" / "chunked_quality.json"
PORT = 8191
RK = [sys.executable, "-m", "rerank_kit.cli"]


def cpu() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    kind = "AMX" if "amx_tile" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "AVX2"
    return f"{platform.processor() or platform.machine()} ({kind}), {os.cpu_count()} cores"


def serve(overlap: int, state: Path) -> None:
    env = {**os.environ, "RERANK_KIT_CHUNK_OVERLAP_PERCENT": str(overlap), "RERANK_KIT_STATE_DIR": str(state)}
    subprocess.run([*RK, "up", "--port", str(PORT), "--no-self-check"], check=True, env=env, stdout=subprocess.DEVNULL)


def stop(state: Path) -> None:
    env = {**os.environ, "RERANK_KIT_STATE_DIR": str(state)}
    subprocess.run([*RK, "down", "--port", str(PORT)], check=False, env=env, stdout=subprocess.DEVNULL)


def bench(dataset: Path, chunks: int | None, out: Path) -> dict:
    argv = [*RK, "bench", "--url", f"http://127.0.0.1:{PORT}", "--workload", f"beir:{dataset}",
            "--docs-per-request", "100", "--concurrency", "4", "--warmup", "4", "--out", str(out)]  # fmt: skip
    if chunks is not None:
        argv += ["--max-chunks-per-doc", str(chunks)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    summary, quality = report["summary"], report.get("quality") or {}
    return {
        "ndcg@10_bm25": quality.get("first_stage", {}).get("ndcg@10"),
        "ndcg@10": quality.get("reranked", {}).get("ndcg@10"),
        "pairs_scored": summary.get("scored_pairs"),
        "p50_ms": summary["latency_ms"]["p50"],
        "p99_ms": summary["latency_ms"]["p99"],
        "docs_per_s": summary["pairs_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the long variant only, default overlap")
    args = parser.parse_args()
    if not DL19.is_dir():
        sys.exit(f"{DL19} is absent (shared benchmark data): nothing to measure")
    subprocess.run([sys.executable, "-m", "rerank_kit.bench.long_documents", "--source", str(DL19), "--out",
                    str(LONG)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    scratch = ROOT / "bench" / "out" / "chunked_quality"
    scratch.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[int, str, Path, int]] = []  # (overlap %, name, dataset, max_chunks_per_doc)
    datasets = [("long", LONG)] if args.quick else [("original", DL19), ("long", LONG)]
    for name, path in datasets:
        for chunks in (1, 8) if name == "original" else (1, 2, 4, 8):
            plan.append((12, name, path, chunks))
    if not args.quick:
        plan += [(0, "long", LONG, 8), (25, "long", LONG, 8)]
    rows = []
    started = time.time()
    for overlap in dict.fromkeys(o for o, *_ in plan):
        state = scratch / f"state-{overlap}"
        serve(overlap, state)
        try:
            for o, name, path, chunks in plan:
                if o != overlap:
                    continue
                print(f"[{time.time() - started:5.0f} s] {name}, max_chunks_per_doc={chunks}, overlap {o} %",
                      flush=True)  # fmt: skip
                result = bench(path, chunks, scratch / f"{name}-{chunks}-{o}.json")
                rows.append({"dataset": name, "max_chunks_per_doc": chunks, "overlap_percent": o, **result})
        finally:
            stop(state)
    OUT.write_text(json.dumps({"cpu": cpu(), "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    print("| dataset | max_chunks_per_doc | overlap | nDCG@10 BM25 | nDCG@10 reranked | pairs scored | p50 ms | "
          "p99 ms | docs/s |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['dataset']} | {r['max_chunks_per_doc']} | {r['overlap_percent']} % | {r['ndcg@10_bm25']:.4f} | "
              f"{r['ndcg@10']:.4f} | {r['pairs_scored']:,} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['docs_per_s']:.0f} |")  # fmt: skip
    print(f"CPU: {cpu()}; {OUT}")


if __name__ == "__main__":
    main()
