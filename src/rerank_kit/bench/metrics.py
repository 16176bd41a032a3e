"""Throughput, latency and retrieval-quality numbers from measured samples.

>>> percentile([1.0, 2.0, 3.0, 4.0], 50)
2.5
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rerank_kit.bench.loadgen import LoadResult, Sample
from rerank_kit.bench.workloads import Workload

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(result: LoadResult) -> dict[str, Any]:
    """Requests/s, pairs/s, tokens/s, latency percentiles (ms) and errors by kind for the measured phase."""
    ok = [s for s in result.samples if s.ok]
    wall = result.wall or math.nan
    latencies = [s.latency * 1000 for s in ok]
    summary: dict[str, Any] = {
        "requests": len(result.samples),
        "ok": len(ok),
        "errors": dict(Counter(s.error for s in result.samples if not s.ok)),
        "duration_s": round(result.wall, 3),
        "requests_per_s": len(ok) / wall,
        "pairs_per_s": sum(s.pairs for s in ok) / wall,
        "tokens_per_s": sum(s.tokens for s in ok) / wall,
        "tokens_per_pair": (sum(s.tokens for s in ok) / max(1, sum(s.pairs for s in ok))) if ok else math.nan,
        # pairs the server scored (long documents in windows); None when it does not say (plain vLLM)
        "scored_pairs": sum(s.scored for s in ok) if ok and all(s.scored for s in ok) else None,
        "latency_ms": {f"p{q}": percentile(latencies, q) for q in PERCENTILES}
        | {
            "mean": (sum(latencies) / len(latencies)) if latencies else math.nan,
            "max": max(latencies, default=math.nan),
        },
        "interrupted": result.interrupted,
        "models": models_seen(result.samples),
    }
    return summary


def models_seen(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Each model that answered, in order of its first answer: how many requests, and the first and last
    answer in seconds from the first request sent. Two or more entries: the model changed during the
    run (a `rerank-kit switch`); the second's ``first_s`` is when.
    """
    ok = [s for s in samples if s.ok and s.model]
    if not ok:
        return []
    t0 = min(s.intended for s in samples)
    seen: dict[str, dict[str, Any]] = {}
    for s in sorted(ok, key=lambda s: s.finished):
        entry = seen.setdefault(s.model, {"model": s.model, "requests": 0, "first_s": round(s.finished - t0, 3)})
        entry["requests"] += 1
        entry["last_s"] = round(s.finished - t0, 3)
    return list(seen.values())


def run_quality(workload: Workload, result: LoadResult) -> dict[str, dict[str, float]] | None:
    """nDCG@10, MRR@10 and Recall@100 of the first stage and of the reranked lists (BEIR's evaluator).

    Uses the first successful measurement of each judged case; None when the workload has no judgments.
    """
    if not workload.judged:
        return None
    reranked: dict[str, dict[str, float]] = {}
    first_stage: dict[str, dict[str, float]] = {}
    for sample in [*result.warmup_samples, *result.samples]:
        case = workload.cases[sample.case]
        if not sample.ok or sample.scores is None or case.qid is None or case.doc_ids is None or case.qid in reranked:
            continue
        reranked[case.qid] = dict(zip(case.doc_ids, sample.scores, strict=True))
        if case.first_stage is not None:
            first_stage[case.qid] = dict(zip(case.doc_ids, case.first_stage, strict=True))
    qrels = {q: workload.qrels[q] for q in reranked if q in workload.qrels}  # type: ignore[index]
    if not qrels:
        return None
    out = {"queries": {"judged": len(qrels)}, "reranked": retrieval_metrics(qrels, reranked)}
    if first_stage:
        out["first_stage"] = retrieval_metrics(qrels, first_stage)
    return out


def retrieval_metrics(qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]]) -> dict[str, float]:
    """BEIR's evaluator (pytrec_eval): nDCG@10, Recall@100; BEIR's MRR@10 (relevance > 0 counts)."""
    import logging

    from beir.retrieval.evaluation import EvaluateRetrieval

    logging.getLogger("beir").setLevel(logging.WARNING)
    results = {q: dict(docs) for q, docs in results.items()}  # BEIR pops identical ids in place
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, results, [10, 100])
    mrr = EvaluateRetrieval.evaluate_custom(qrels, results, [10], metric="mrr")
    return {"ndcg@10": ndcg["NDCG@10"], "mrr@10": mrr["MRR@10"], "recall@100": recall["Recall@100"]}
