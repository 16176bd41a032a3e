"""Third-party clients, unchanged, against a real rerank-kit server with an API key: each is called as its
documentation shows a user calling it (base URL pointing at the server, the key, the served model's name), and
must rank exactly as rerank-kit's own RerankClient does: the same indices in the same order, the same scores.

What each sends (path, body) is recorded in rerank_kit/normalize.py, which lists the bodies the guard rewrites
for vLLM: langchain-cohere (a null max_tokens_per_doc), Haystack (max_tokens_per_doc 4096 on a 256-token
model) and the v1 Cohere SDK given {"text": ...} documents fail without it. A client whose package is not
installed is skipped."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from conftest import MINILM_KEY, Server
from rerank_kit import RerankClient

pytestmark = pytest.mark.vllm

KEY = MINILM_KEY
QUERY = "How do I serve a reranking model behind an HTTP API?"
# Short and distinct: no truncation, no duplicates, so a returned text identifies its index.
DOCS = [
    "Paris is the capital and largest city of France.",
    "vLLM serves models behind an OpenAI-compatible HTTP server, including a rerank endpoint.",
    "Bananas are a good source of potassium.",
    "A reranker scores each query and document pair and sorts the documents by that score.",
    "The Eiffel Tower was completed in 1889.",
    "Start the server with one command, then send the query and the documents to /v1/rerank.",
]
TOP_N = 3
# How far the same request's score may move between two calls. vLLM embeds the query and each document as
# separate engine requests, and which of them share an engine step depends on when each arrives; a float32
# forward gives the same score (within 1e-6) whatever the batch, a bfloat16 one does not: its matmuls round
# differently per batch shape. CI on an AMX Xeon (bfloat16 by default, 2026-12-05) saw 2.3e-4 on one document.
TOLERANCE = {"float32": 1e-6, "bfloat16": 2e-3, "float16": 2e-3}


@pytest.fixture(scope="module")
def server(minilm_server) -> Server:
    """The packaged all-MiniLM-L6-v2 (what `rerank-kit up` serves on CPU), with an API key; max_model_len 256."""
    return minilm_server


@pytest.fixture(scope="module")
def model(server) -> str:
    """The name clients send as "model"."""
    return server.command.model_name


@pytest.fixture(scope="module")
def expected(server, model) -> list[tuple[int, float]]:
    """(index, score) best first, from rerank-kit's own client."""
    with RerankClient(server.url, api_key=KEY, model=model) as client:
        response = client.rerank(QUERY, DOCS)
    ranking = [(r.index, r.relevance_score) for r in response.results]
    assert sorted(i for i, _ in ranking) == list(range(len(DOCS)))
    return ranking


@pytest.fixture(scope="module")
def tolerance(server) -> float:
    """TOLERANCE for the dtype the server runs (the launcher picks it per CPU kind)."""
    args = server.command.server_args
    return TOLERANCE[args[args.index("--dtype") + 1]]


def assert_same_ranking(
    got: list[tuple[int, float]], expected: list[tuple[int, float]], tolerance: float, top_n: int | None = None
) -> None:
    """The best ``top_n`` (else every) document of ``expected`` with the same scores, best first. Documents whose
    expected scores are within the tolerance of each other may trade places, also across the top_n cut."""
    want = dict(expected)
    assert len(got) == (top_n or len(expected))
    scores = [score for _, score in got]
    assert scores == sorted(scores, reverse=True), "not sorted best first"
    for index, score in got:
        assert score == pytest.approx(want[index], abs=tolerance), f"document {index}"
    lowest_kept = min(want[index] for index, _ in got)
    left_out = set(want) - {index for index, _ in got}
    assert all(want[index] <= lowest_kept + tolerance for index in left_out), "a better document was left out"


def by_text(pairs: list[tuple[str, float]]) -> list[tuple[int, float]]:
    """(index, score) from (document text, score), for clients that hand back documents rather than indices."""
    return [(DOCS.index(text), score) for text, score in pairs]


def test_cohere_sdk_v1_client(server, model, expected, tolerance):
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key=KEY, base_url=server.url)  # POST /v1/rerank
    response = client.rerank(model=model, query=QUERY, documents=DOCS, top_n=TOP_N)
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected, tolerance, TOP_N)
    # The v1 API's document objects: ranked on their "text" (normalize.py turns them into strings for vLLM).
    response = client.rerank(model=model, query=QUERY, documents=[{"text": d, "id": i} for i, d in enumerate(DOCS)])
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected, tolerance)


def test_cohere_sdk_client_v2(server, model, expected, tolerance):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key=KEY, base_url=server.url)  # POST /v2/rerank
    response = client.rerank(model=model, query=QUERY, documents=DOCS, top_n=TOP_N)
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected, tolerance, TOP_N)
    # An explicit None is sent as "top_n": null (normalize.py drops it: every document).
    response = client.rerank(model=model, query=QUERY, documents=DOCS, top_n=None)
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected, tolerance)


def test_cohere_sdk_async_client_v2(server, model, expected, tolerance):
    cohere = pytest.importorskip("cohere")

    async def rerank():
        client = cohere.AsyncClientV2(api_key=KEY, base_url=server.url)
        return await client.rerank(model=model, query=QUERY, documents=DOCS)

    response = asyncio.run(rerank())
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected, tolerance)


def test_langchain_cohere_rerank(server, model, expected, tolerance):
    # The way LangChain's docs reach a vLLM reranker. It sends "max_tokens_per_doc": null on every call,
    # which vLLM refuses with a 400 unless the guard normalises the body.
    langchain_cohere = pytest.importorskip("langchain_cohere")
    from langchain_core.documents import Document

    documents = [Document(page_content=d) for d in DOCS]
    reranker = langchain_cohere.CohereRerank(base_url=server.url, model=model, cohere_api_key=KEY, top_n=TOP_N)
    kept = reranker.compress_documents(documents, QUERY)
    ranked = by_text([(d.page_content, d.metadata["relevance_score"]) for d in kept])
    assert_same_ranking(ranked, expected, tolerance, TOP_N)
    # top_n=None ("every document") adds "top_n": null.
    everything = langchain_cohere.CohereRerank(base_url=server.url, model=model, cohere_api_key=KEY, top_n=None)
    kept = everything.compress_documents(documents, QUERY)
    assert_same_ranking(by_text([(d.page_content, d.metadata["relevance_score"]) for d in kept]), expected, tolerance)


def test_llama_index_cohere_rerank(server, model, expected, tolerance):
    module = pytest.importorskip("llama_index.postprocessor.cohere_rerank")
    from llama_index.core.schema import NodeWithScore, TextNode

    # 0.4 (llama-index-core 0.12) sends to /v1/rerank with cohere.Client; 0.10 to /v2/rerank with ClientV2.
    reranker = module.CohereRerank(api_key=KEY, base_url=server.url, model=model, top_n=len(DOCS))
    nodes = reranker.postprocess_nodes([NodeWithScore(node=TextNode(text=d)) for d in DOCS], query_str=QUERY)
    assert_same_ranking(by_text([(n.node.get_content(), n.score) for n in nodes]), expected, tolerance)


@pytest.mark.parametrize(
    ("provider", "suffix"),
    [
        ("hosted_vllm", ""),  # POST /rerank
        ("hosted_vllm", "/v1"),  # POST /v1/rerank
        ("cohere", ""),  # POST /v2/rerank
    ],
)
def test_litellm_rerank(server, model, expected, tolerance, monkeypatch, provider, suffix):
    # LiteLLM fetches its model price list from the internet at import unless told to use the bundled one.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    response = litellm.rerank(
        model=f"{provider}/{model}", query=QUERY, documents=DOCS, top_n=TOP_N, api_base=server.url + suffix, api_key=KEY
    )
    assert_same_ranking([(r["index"], r["relevance_score"]) for r in response.results], expected, tolerance, TOP_N)


def test_haystack_cohere_ranker(server, model, expected, tolerance, monkeypatch):
    # Sends its default "max_tokens_per_doc": 4096 on every call; this model's max_model_len is 256.
    # Haystack sends usage telemetry (posthog) unless told not to; this machine reaches no such host.
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    ranker_module = pytest.importorskip("haystack_integrations.components.rankers.cohere")
    from haystack import Document
    from haystack.utils import Secret

    ranker = ranker_module.CohereRanker(
        model=model, top_k=TOP_N, api_key=Secret.from_token(KEY), api_base_url=server.url
    )
    documents = [Document(content=d) for d in DOCS]
    ranked = ranker.run(query=QUERY, documents=documents)["documents"]
    assert_same_ranking(by_text([(d.content, d.score) for d in ranked]), expected, tolerance, TOP_N)
    ranked = asyncio.run(ranker.run_async(query=QUERY, documents=documents))["documents"]
    assert_same_ranking(by_text([(d.content, d.score) for d in ranked]), expected, tolerance, TOP_N)


def test_requests_in_jinas_shape(server, model, expected, tolerance):
    requests = pytest.importorskip("requests")
    response = requests.post(
        server.url + "/v1/rerank",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": model, "query": QUERY, "documents": DOCS, "top_n": TOP_N},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert_same_ranking([(r["index"], r["relevance_score"]) for r in results], expected, tolerance, TOP_N)
    assert [r["document"]["text"] for r in results] == [DOCS[r["index"]] for r in results]


# A long document whose only relevant passage is its last: unrelated sentences first, 3 windows of MiniLM's 256.
UNRELATED = " ".join(f"Bananas are a good source of potassium, fact number {i}." for i in range(40))
ANSWER = DOCS[5]
LONG_DOCUMENT = f"{UNRELATED} {ANSWER}"


def test_a_long_documents_last_window_is_scored_and_cohere_v1s_max_chunks_per_doc_reaches_it(server, model, tolerance):
    """server.chunking with real weights: the passage past the first window is read, the document scores as its
    last window does alone, and Cohere v1's max_chunks_per_doc=1 (truncation) misses it."""
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key=KEY, base_url=server.url)  # POST /v1/rerank
    chunked = client.rerank(model=model, query=QUERY, documents=[LONG_DOCUMENT, DOCS[0]])
    truncated = client.rerank(model=model, query=QUERY, documents=[LONG_DOCUMENT, DOCS[0]], max_chunks_per_doc=1)
    best = {r.index: r.relevance_score for r in chunked.results}
    first = {r.index: r.relevance_score for r in truncated.results}
    assert chunked.results[0].index == 0, "the document holding the answer ranks first once its end is read"
    assert best[0] > first[0] + 0.15, (best, first)
    assert best[1] == pytest.approx(first[1], abs=tolerance)  # a short document scores as before
    # which window won (the last), and that window alone scores the same
    with RerankClient(server.url, api_key=KEY, model=model) as ours:
        response = httpx.post(
            server.url + "/v1/rerank",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": model, "query": QUERY, "documents": [LONG_DOCUMENT]},
            timeout=60,
        ).json()
        chunk = response["results"][0]["chunk"]
        assert chunk["index"] == chunk["count"] - 1 == 2 and chunk["end"] == len(LONG_DOCUMENT)
        alone = ours.rerank(QUERY, [LONG_DOCUMENT[chunk["start"] : chunk["end"]]])
        assert alone.pairs == 1
        assert response["results"][0]["relevance_score"] == pytest.approx(alone[0].relevance_score, abs=tolerance)
        mine = ours.rerank(QUERY, [LONG_DOCUMENT, DOCS[0]], max_chunks_per_doc=2)
        assert mine.pairs == 3  # the long document's first two windows, neither holding the answer
        assert {r.index: r.relevance_score for r in mine}[0] < best[0] - 0.15


def test_windows_past_the_servers_pair_budget_are_a_413_that_says_so(server, model):
    document = " ".join(f"Sentence {i} of a long document about nothing in particular." for i in range(400))
    response = httpx.post(
        server.url + "/v1/rerank",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": model, "query": QUERY, "documents": [f"{i} {document}" for i in range(130)]},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    message = response.json()["error"]["message"]
    assert "130 documents make 1,040 windows" in message and "--max-documents" in message
