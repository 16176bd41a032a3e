"""One workload, four ways to run it, side by side in one session on this machine.

Workload: the MiniLM-L6 cross-encoder (real all-MiniLM-L6-v2 encoder + 1-label head, the shape of
cross-encoder/ms-marco-MiniLM-L-6-v2), 100 documents of ~120 tokens per request (~129 tokens per
pair), the same 64 seeded requests for everyone.

  (a) vLLM served by rerank-kit (`rerank-kit up`, default CPU choices), driven by `rerank-kit bench`
  (a0) the same before issue 14 (no Intel OpenMP preload), and (a+) with more tokens per engine step
  (b) sentence-transformers CrossEncoder.predict in process, one request = one predict call
  (c) a plain transformers forward in process at its best batch size: the compute limit
  (d) infinity-emb serving the same model files, driven by the same `rerank-kit bench`

Every system gets this machine's best dtype: bf16 where the CPU has it natively (AMX/AVX512-BF16), else
float32 (bf16 is emulated and several times slower there), the same rule as rerank-kit's CPU default.

Servers are measured closed-loop at --concurrency; in-process systems one request at a time (they
use every core already). Rounds interleave the systems and the median is reported.

    .venv/bin/python bench/compare_systems.py --rounds 2 --duration 40 --out bench/results/compare_systems.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from reference_env import torch_index_args  # noqa: E402 - tests/, on sys.path above
from rerank_kit import launcher  # noqa: E402
from rerank_kit.bench.metrics import percentile  # noqa: E402
from rerank_kit.bench.runner import BenchConfig, run_bench  # noqa: E402
from rerank_kit.bench.workloads import random_workload  # noqa: E402
from rerank_kit.launcher import machine  # noqa: E402
from rerank_kit.recipes import get_recipe  # noqa: E402

OUT = ROOT / "bench" / "out"
INFINITY_VENV = OUT / "venv-infinity"
INFINITY_REQUIREMENTS = ["torch==2.13.0", "infinity-emb[server,torch]==0.0.78"]


def model_path() -> Path:
    import tiny_models

    return tiny_models.build("ms-marco-cross-encoder", OUT / "models")


def serve_and_bench(command: launcher.Command, workload, concurrency: int, duration: float, log: Path) -> dict:
    with launcher.serving(command, log_path=log, timeout=900):
        report = asyncio.run(
            run_bench(
                BenchConfig(urls=[command.url], concurrency=concurrency, duration=duration, warmup=4), workload=workload
            )
        )
    s = report["summary"]
    return {
        "pairs_per_s": s["pairs_per_s"],
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "errors": s["errors"],
        "requests": s["ok"],
    }


def in_process(predict, workload, duration: float) -> dict:
    """One request (query + its documents) per call, back to back, for ``duration`` seconds."""
    for case in workload.cases[:2]:
        predict(case)  # warm-up
    latencies, pairs, start = [], 0, time.perf_counter()
    i = 0
    while time.perf_counter() - start < duration:
        case = workload.cases[i % len(workload.cases)]
        t = time.perf_counter()
        predict(case)
        latencies.append(time.perf_counter() - t)
        pairs += len(case.documents)
        i += 1
    wall = time.perf_counter() - start
    return {
        "pairs_per_s": pairs / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": {},
        "requests": len(latencies),
    }


def best_dtype() -> str:
    return "bfloat16" if machine.detect().bf16_fast else "float32"


def sentence_transformers_predict(path: Path, dtype: str):
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path), device="cpu", model_kwargs={"torch_dtype": getattr(torch, dtype)})
    return lambda case: model.predict([(case.query, d) for d in case.documents], batch_size=32, show_progress_bar=False)


def transformers_forward(path: Path, workload, dtype: str):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype)).eval()

    def make(batch: int):
        def predict(case):
            with torch.inference_mode():
                for i in range(0, len(case.documents), batch):
                    docs = case.documents[i : i + batch]
                    enc = tokenizer([case.query] * len(docs), docs, padding=True, truncation=True, return_tensors="pt")
                    model(**enc)

        return predict

    best = max((16, 32, 50, 100), key=lambda b: in_process(make(b), workload, 8)["pairs_per_s"])
    return make(best), best


def infinity_python() -> Path:
    python = INFINITY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *torch_index_args(), *INFINITY_REQUIREMENTS],
            check=True,
        )
    return python


def infinity_command(path: Path, port: int, dtype: str) -> launcher.Command:
    """infinity-emb on the same model directory, best dtype, all cores; its API under /v1, /health at the root."""
    infinity_python()
    argv = [
        str(INFINITY_VENV / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        str(path),
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--batch-size",
        "32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--url-prefix",
        "/v1",
    ]
    env = {"OMP_NUM_THREADS": str(machine.detect().cpu_count)}
    recipe = get_recipe(str(path), family="ms-marco-cross-encoder")
    return launcher.Command(
        argv=argv,
        env=env,
        choices=[],
        recipe=recipe,
        url=f"http://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        server_args=(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=45.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--only", nargs="*")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="every system at this dtype instead of this CPU's best (bfloat16 where it is native), e.g. "
        "--dtype float32 --only '(b)' '(c)' to check that the in-process systems are not faster without it",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare_systems.json")
    args = parser.parse_args()
    dtype = args.dtype or best_dtype()

    path = model_path()
    workload = random_workload(cases=64, docs_per_request=100, doc_tokens=120, seed=0)
    recipe = get_recipe(str(path), family="ms-marco-cross-encoder")
    port = launcher.free_port()
    ours = launcher.build_command(
        recipe,
        launcher.ServeOptions(port=port, dtype=args.dtype),  # None: the launcher's choice for this CPU
        vllm_version=launcher.vllm_version(),
        machine=machine.detect(),
    )
    preload = [lib for lib in ours.env.get("LD_PRELOAD", "").split(":") if lib and "libiomp" not in lib]
    before = ours.with_args(env={k: v for k, v in ours.env.items() if k != "LD_PRELOAD"})
    if preload:
        before = before.with_args(env={**before.env, "LD_PRELOAD": ":".join(preload)})
    bigger_steps = ours.with_args("--max-num-batched-tokens", "8192")
    systems = {
        "(a) vLLM via rerank-kit": lambda: serve_and_bench(
            ours, workload, args.concurrency, args.duration, OUT / "compare-vllm.log"
        ),
        "(a0) vLLM via rerank-kit before issue 14 (no Intel OpenMP preload)": lambda: serve_and_bench(
            before, workload, args.concurrency, args.duration, OUT / "compare-vllm-before.log"
        ),
        "(a+) vLLM via rerank-kit, --max-num-batched-tokens 8192": lambda: serve_and_bench(
            bigger_steps, workload, args.concurrency, args.duration, OUT / "compare-vllm-8192.log"
        ),
        "(b) sentence-transformers CrossEncoder (in process)": lambda: in_process(
            sentence_transformers_predict(path, dtype), workload, args.duration
        ),
        "(c) transformers forward, best batch (in process)": lambda: _forward(path, workload, args.duration, dtype),
        "(d) infinity-emb": lambda: serve_and_bench(
            infinity_command(path, launcher.free_port(), dtype),
            workload,
            args.concurrency,
            args.duration,
            OUT / "compare-infinity.log",
        ),
    }
    if args.only:
        systems = {k: v for k, v in systems.items() if any(o in k for o in args.only)}
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    OUT.mkdir(parents=True, exist_ok=True)
    for round_no in range(args.rounds):
        for name, run in systems.items():
            result = run()
            runs[name].append(result)
            print(json.dumps({"system": name, "round": round_no, **result}), flush=True)
    summary = {
        name: {
            "median_pairs_per_s": statistics.median(r["pairs_per_s"] for r in rows),
            "all_pairs_per_s": [round(r["pairs_per_s"], 1) for r in rows],
            "median_p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "median_p99_ms": statistics.median(r["p99_ms"] for r in rows),
        }
        for name, rows in runs.items()
    }
    args.out.write_text(
        json.dumps(
            {
                "vllm": launcher.vllm_version(),
                "dtype": dtype,
                "machine": {
                    k: sorted(v) if isinstance(v, frozenset) else v
                    for k, v in dataclasses.asdict(machine.detect()).items()
                },
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"\n| system | pairs/s (median of {args.rounds}) | runs | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, row in summary.items():
        print(
            f"| {name} | {row['median_pairs_per_s']:.1f} | {row['all_pairs_per_s']} | "
            f"{row['median_p50_ms']:.0f} | {row['median_p99_ms']:.0f} |"
        )
    names = list(summary)
    if names and names[0].startswith("(a)"):
        ours_tp = summary[names[0]]["median_pairs_per_s"]
        for other in names[1:]:
            print(f"(a) / {other}: {ours_tp / summary[other]['median_pairs_per_s']:.2f}")


def _forward(path: Path, workload, duration: float, dtype: str) -> dict:
    predict, batch = transformers_forward(path, workload, dtype)
    result = in_process(predict, workload, duration)
    return {**result, "batch": batch}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
