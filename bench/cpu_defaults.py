"""CPU back-end defaults, measured: vLLM's own defaults vs each rerank-kit choice, on this machine.

Workload (issue "Foundation", item 5): a MiniLM-L6 cross-encoder (the real all-MiniLM-L6-v2 encoder
with a 1-label head, as cross-encoder/ms-marco-MiniLM-L-6-v2), 100 documents of ~120 tokens per
request (~129 tokens per query-document pair), closed loop at concurrency 4, through rerank-kit's
own load generator. Configurations run in interleaved rounds and the median is reported, because
throughput on a shared 2-core VM moves by +-20 % between minutes.

    .venv/bin/python bench/cpu_defaults.py --rounds 3 --duration 45 --out bench/results/cpu_defaults.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rerank_kit import launcher  # noqa: E402
from rerank_kit.bench.runner import BenchConfig, run_bench  # noqa: E402
from rerank_kit.bench.workloads import random_workload  # noqa: E402
from rerank_kit.launcher import machine  # noqa: E402
from rerank_kit.recipes import get_recipe  # noqa: E402

MODEL_DIR = ROOT / "bench" / "out" / "models"


def model_path() -> Path:
    import tiny_models

    return tiny_models.build("ms-marco-cross-encoder", MODEL_DIR)


def configurations(path: Path, port: int) -> dict[str, launcher.Command]:
    recipe = get_recipe(str(path), family="ms-marco-cross-encoder")
    host = machine.detect()
    version = launcher.vllm_version()
    base = launcher.build_command(recipe, launcher.ServeOptions(port=port), vllm_version=version, machine=None)
    # vLLM as a user would start it: only the memory share changed, because its 0.92 default
    # does not fit a shared machine and the server would not start at all.
    defaults = base.with_args("--gpu-memory-utilization", "0.3", env={})
    bf16 = defaults.with_args("--dtype", "bfloat16")
    reserved0 = bf16.with_args(env={"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    uni = bf16.with_args(env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(host.cpu_count)})
    ours = launcher.build_command(recipe, launcher.ServeOptions(port=port), vllm_version=version, machine=host)
    return {
        "vllm-defaults": defaults,
        "+dtype-bf16": bf16,
        "+dtype-bf16 +reserved-cpus-0": reserved0,
        "+dtype-bf16 +uni-executor": uni,
        "rerank-kit-defaults": ours,
    }


def in_process(path: Path, workload, duration: float) -> dict[str, float]:
    """A plain transformers forward in bf16 at its best batch size: the compute limit of this machine."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(machine.detect().cpu_count)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.bfloat16).eval()
    best = {}
    for batch in (25, 50, 100):
        pairs, start = 0, time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - start < duration / 3:
                for case in workload.cases:
                    for i in range(0, len(case.documents), batch):
                        docs = case.documents[i : i + batch]
                        enc = tokenizer(
                            [case.query] * len(docs), docs, padding=True, truncation=True, return_tensors="pt"
                        )
                        model(**enc)
                        pairs += len(docs)
                    if time.perf_counter() - start >= duration / 3:
                        break
        best[batch] = pairs / (time.perf_counter() - start)
    return {"pairs_per_s": max(best.values()), "by_batch": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=45.0, help="measured seconds per configuration and round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--only", nargs="*", help="run only these configurations")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_defaults.json")
    args = parser.parse_args()

    path = model_path()
    port = launcher.free_port()
    configs = configurations(path, port)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
    workload = random_workload(cases=64, docs_per_request=100, doc_tokens=120, seed=0)
    results: dict[str, list[dict]] = {name: [] for name in [*configs, "in-process-transformers-bf16"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for round_no in range(args.rounds):
        for name, command in configs.items():
            log = args.out.parent / f"cpu_defaults-{name}.log"
            started = time.monotonic()
            with launcher.serving(command, log_path=log, timeout=900):
                start_s = time.monotonic() - started
                report = asyncio.run(
                    run_bench(
                        BenchConfig(urls=[command.url], concurrency=args.concurrency, duration=args.duration, warmup=4),
                        workload=workload,
                    )
                )
            s = report["summary"]
            row = {
                "round": round_no,
                "start_s": round(start_s, 1),
                "pairs_per_s": s["pairs_per_s"],
                "p50_ms": s["latency_ms"]["p50"],
                "p99_ms": s["latency_ms"]["p99"],
                "errors": s["errors"],
                "tokens_per_pair": s["tokens_per_pair"],
                "command": command.shell(),
            }
            results[name].append(row)
            print(json.dumps({"config": name, **{k: v for k, v in row.items() if k != "command"}}), flush=True)
        ip = in_process(path, workload, args.duration)
        results["in-process-transformers-bf16"].append({"round": round_no, **ip})
        print(json.dumps({"config": "in-process-transformers-bf16", "round": round_no, **ip}), flush=True)

    summary = {
        name: {
            "median_pairs_per_s": statistics.median(r["pairs_per_s"] for r in rows),
            "all_pairs_per_s": [round(r["pairs_per_s"], 1) for r in rows],
            "median_p50_ms": statistics.median(r["p50_ms"] for r in rows) if "p50_ms" in rows[0] else None,
            "median_p99_ms": statistics.median(r["p99_ms"] for r in rows) if "p99_ms" in rows[0] else None,
        }
        for name, rows in results.items()
        if rows
    }
    args.out.write_text(
        json.dumps(
            {"machine": report["machine"], "vllm": launcher.vllm_version(), "summary": summary, "runs": results},
            indent=2,
        )
    )
    print(f"\n| configuration | pairs/s (median of {args.rounds}) | runs | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, row in summary.items():
        p50 = f"{row['median_p50_ms']:.0f}" if row["median_p50_ms"] else "-"
        p99 = f"{row['median_p99_ms']:.0f}" if row["median_p99_ms"] else "-"
        print(f"| {name} | {row['median_pairs_per_s']:.1f} | {row['all_pairs_per_s']} | {p50} | {p99} |")


if __name__ == "__main__":
    main()
