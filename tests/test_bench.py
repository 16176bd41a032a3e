"""`rerank-kit bench`: metric math, scheduling, and real runs against vLLM."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import MINILM_KEY
from rerank_kit.bench.loadgen import LoadConfig, poisson_offsets, run_load
from rerank_kit.bench.metrics import percentile, retrieval_metrics, summarize
from rerank_kit.bench.workloads import (
    Case,
    Workload,
    build_beir_workload,
    file_workload,
    random_workload,
    write_workload,
)
from rerank_kit.client import AsyncRerankClient

ROOT = Path(__file__).resolve().parent.parent
DL19 = ROOT.parent / "shared" / "data" / "beir" / "msmarco-dl19-5k"
needs_dl19 = pytest.mark.skipif(not DL19.exists(), reason=f"{DL19} is absent (shared benchmark data)")


# --- metric math ------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q):
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_ndcg_mrr_recall_on_a_hand_computed_case():
    qrels = {"q1": {"d1": 3, "d2": 0, "d3": 1}, "q2": {"d9": 1}}
    results = {"q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.1}, "q2": {"d5": 0.9, "d6": 0.8}}
    # q1: trec_eval nDCG uses gain = grade. DCG = 0/log2(2) + 3/log2(3) + 1/log2(4); IDCG = 3/log2(2) + 1/log2(3).
    ndcg_q1 = (3 / math.log2(3) + 1 / 2) / (3 + 1 / math.log2(3))
    metrics = retrieval_metrics(qrels, results)
    assert metrics["ndcg@10"] == pytest.approx((ndcg_q1 + 0.0) / 2, abs=1e-5)
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 0) / 2, abs=1e-5)  # first relevant of q1 at rank 2
    assert metrics["recall@100"] == pytest.approx((2 / 2 + 0) / 2, abs=1e-5)  # q1 retrieves both relevant docs


def test_random_workload_is_deterministic_and_sized():
    a = random_workload(cases=3, docs_per_request=5, doc_tokens=7, query_tokens=2, seed=42)
    b = random_workload(cases=3, docs_per_request=5, doc_tokens=7, query_tokens=2, seed=42)
    c = random_workload(cases=3, docs_per_request=5, doc_tokens=7, query_tokens=2, seed=43)
    assert a.cases == b.cases and a.cases != c.cases
    assert all(len(d.split()) == 7 for case in a.cases for d in case.documents)
    assert all(len(case.query.split()) == 2 for case in a.cases)


# --- scheduling --------------------------------------------------------------------------------------------


def test_poisson_offsets_have_the_requested_rate():
    gen = poisson_offsets(rate=20.0, seed=3)
    times = [next(gen) for _ in range(4001)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0
    assert statistics.mean(gaps) == pytest.approx(1 / 20.0, rel=0.05)
    assert statistics.pstdev(gaps) == pytest.approx(1 / 20.0, rel=0.1)  # exponential: sd == mean


def _serialised_server(delay: float):
    """A server that handles one request at a time, each taking ``delay`` seconds."""
    lock = asyncio.Lock()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        async with lock:
            await asyncio.sleep(delay)
        docs = json.loads(request.content)["documents"]
        return httpx.Response(
            200,
            json={
                "model": "m",
                "usage": {"prompt_tokens": 10 * len(docs), "total_tokens": 0},
                "results": [{"index": i, "relevance_score": 0.5} for i in range(len(docs))],
            },
        )

    return handler


def _run(config: LoadConfig, handler) -> list:
    workload = Workload("w", [Case("q", ["a", "b"])])

    async def main():
        async with AsyncRerankClient("http://s", model="m", transport=httpx.MockTransport(handler)) as client:
            return await run_load(client, workload, config)

    return asyncio.run(main())


def test_open_loop_latency_includes_queueing_from_the_intended_send_time():
    # 100 requests/s offered to a server that serves 20/s: open loop must show the queue building up.
    result = _run(LoadConfig(rate=100.0, requests=40, warmup=0, seed=1), _serialised_server(0.05))
    latencies = sorted(s.latency for s in result.samples)
    assert len(latencies) == 40 and all(s.ok for s in result.samples)
    assert latencies[-1] > 1.0  # the last request waited behind ~39 others (~2 s)
    # each intended time follows the Poisson schedule, not the server's pace
    intended = sorted(s.intended for s in result.samples)
    assert intended[-1] - intended[0] < 1.5


def test_closed_loop_never_exceeds_its_concurrency():
    result = _run(LoadConfig(concurrency=1, requests=10, warmup=2), _serialised_server(0.02))
    assert len(result.samples) == 10 and len(result.warmup_samples) == 2
    assert max(s.latency for s in result.samples) < 0.5  # no queue: one in flight at a time
    summary = summarize(result)
    assert summary["ok"] == 10 and summary["errors"] == {}
    assert summary["pairs_per_s"] == pytest.approx(2 * summary["requests_per_s"])
    assert summary["tokens_per_pair"] == pytest.approx(10)


def test_errors_are_counted_by_kind():
    def failing(request):
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(400, json={"error": {"message": "bad"}})

    result = _run(LoadConfig(concurrency=2, requests=6, warmup=0), failing)
    assert summarize(result)["errors"] == {"BadRequestError(400)": 6}


def test_stop_keeps_what_was_measured():
    async def main():
        stop = asyncio.Event()
        workload = Workload("w", [Case("q", ["a"])])
        async with AsyncRerankClient(
            "http://s", model="m", transport=httpx.MockTransport(_serialised_server(0.01))
        ) as client:
            asyncio.get_running_loop().call_later(0.3, stop.set)
            return await run_load(client, workload, LoadConfig(concurrency=2, duration=30, warmup=0), stop=stop)

    result = asyncio.run(main())
    assert result.interrupted and 5 < len(result.samples) < 100 and result.wall < 5


# --- BEIR workloads ---------------------------------------------------------------------------------------


@needs_dl19
def test_build_beir_workload_round_trips(tmp_path):
    wl = build_beir_workload(DL19, top_k=20, max_queries=5)
    assert len(wl.cases) == 5 and all(len(c.documents) == 20 for c in wl.cases)
    assert all(c.qid in wl.qrels for c in wl.cases)
    first = {c.qid: dict(zip(c.doc_ids, c.first_stage, strict=True)) for c in wl.cases}
    assert retrieval_metrics(wl.qrels, first)["ndcg@10"] > 0
    path = write_workload(wl, tmp_path / "w.jsonl")
    back = file_workload(path)
    assert [c.doc_ids for c in back.cases] == [c.doc_ids for c in wl.cases]
    assert back.qrels == wl.qrels


@pytest.mark.parametrize("http", ["httpx", "aiohttp"])
def test_bench_against_a_closed_port_fails_at_once(http):
    from rerank_kit.bench.runner import BenchConfig, run_bench
    from rerank_kit.errors import APIConnectionError
    from rerank_kit.launcher import free_port

    url = f"http://127.0.0.1:{free_port()}"
    config = BenchConfig(urls=[url], requests=2, cases=2, docs_per_request=2, http=http)
    with pytest.raises(APIConnectionError, match="is the server running"):
        asyncio.run(asyncio.wait_for(run_bench(config), timeout=20))


def test_http_stack_choice():
    from rerank_kit.bench.runner import http_stack
    from rerank_kit.errors import ConfigError

    assert http_stack("httpx") == "httpx"
    assert http_stack("auto") == "aiohttp"  # httpx-aiohttp is in the bench extra, installed for the tests
    with pytest.raises(ConfigError, match="auto, aiohttp or httpx"):
        http_stack("curl")


def test_workload_file_keeps_documents_with_unicode_line_separators(tmp_path):
    # MS MARCO passages contain U+2028, which json.dumps(ensure_ascii=False) writes unescaped;
    # str.splitlines() would cut the JSONL line there.
    docs = ["first\u2028line", "next\x85line", "plain"]
    cases = [Case(qid=q, query="query", documents=docs) for q in ("q1", "q2")]
    back = file_workload(write_workload(Workload(name="t", cases=cases), tmp_path / "w.jsonl"))
    assert [c.documents for c in back.cases] == [docs, docs]


# --- real runs ----------------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_short_bench_run_against_vllm(minilm_server, tmp_path):
    out = tmp_path / "r.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_kit.cli",
            "bench",
            "--url",
            minilm_server.url,
            "--concurrency",
            "1,4",
            "--requests",
            "12",
            "--docs-per-request",
            "10",
            "--warmup",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "COLUMNS"}, "RERANK_KIT_API_KEY": MINILM_KEY},
    )
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout, result.stdout  # piped output: tables are not cut to 80 columns
    report = json.loads(out.read_text())
    assert [r["load"]["concurrency"] for r in report["sweep"]] == [1, 4]
    for level in report["sweep"]:
        s = level["summary"]
        assert s["ok"] == 12 and s["errors"] == {} and s["pairs_per_s"] > 0 and s["tokens_per_s"] > 0
        assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
        assert level["server"][minilm_server.url]["version"]
    assert out.with_suffix(".png").stat().st_size > 1000
    compare = subprocess.run(
        [sys.executable, "-m", "rerank_kit.cli", "bench", "--compare", str(out), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert compare.returncode == 0 and "1.00x" in compare.stdout


@pytest.mark.vllm
@needs_dl19
def test_reranked_ndcg_matches_in_process_minilm(minilm_server, tmp_path):
    """BM25 vs reranked nDCG@10 on TREC DL19 with the packaged MiniLM served by vLLM, and the same
    model computed in process (sentence-transformers), within 0.002."""
    from sentence_transformers import SentenceTransformer

    workload_file = tmp_path / "dl19.jsonl"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_kit.cli",
            "bench",
            "build",
            "--dataset",
            str(DL19),
            "--top-k",
            "100",
            "--out",
            str(workload_file),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert built.returncode == 0, built.stderr
    out = tmp_path / "q.json"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_kit.cli",
            "bench",
            "--url",
            minilm_server.url,
            "--workload",
            str(workload_file),
            "--concurrency",
            "4",
            "--warmup",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
        env={**os.environ, "RERANK_KIT_API_KEY": MINILM_KEY},
    )
    assert ran.returncode == 0, ran.stderr
    quality = json.loads(out.read_text())["quality"]
    wl = file_workload(workload_file)
    model = SentenceTransformer(
        str(minilm_server.command.argv[minilm_server.command.argv.index("--model") + 1]), device="cpu"
    )
    # Each passage once (3,041 distinct among the 4,300 pairs), in one call that batches them by length: half the
    # time of encoding every case's list (97 s), the same embeddings.
    texts = dict(kv for case in wl.cases for kv in zip(case.doc_ids, case.documents, strict=True))
    encoded = model.encode(list(texts.values()), normalize_embeddings=True, batch_size=64)
    vectors = dict(zip(texts, encoded, strict=True))
    queries = model.encode([case.query for case in wl.cases], normalize_embeddings=True)
    in_process = {
        case.qid: {doc_id: float(vectors[doc_id] @ q) for doc_id in case.doc_ids}
        for case, q in zip(wl.cases, queries, strict=True)
    }
    expected = retrieval_metrics(wl.qrels, in_process)
    print(
        f"DL19: BM25 nDCG@10 {quality['first_stage']['ndcg@10']:.4f} -> reranked {quality['reranked']['ndcg@10']:.4f}"
        f" (in process {expected['ndcg@10']:.4f})"
    )
    assert quality["queries"]["judged"] == 43
    assert abs(quality["reranked"]["ndcg@10"] - expected["ndcg@10"]) <= 0.002
    assert quality["reranked"]["ndcg@10"] > quality["first_stage"]["ndcg@10"]
