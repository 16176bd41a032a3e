"""Both clients against a real vLLM server started by rerank-kit (a tiny Qwen3-Reranker: it takes
instructions, so every client feature has something real to act on)."""

from __future__ import annotations

import asyncio

import pytest

from rerank_kit import AsyncRerankClient, RerankClient
from rerank_kit.errors import BadRequestError, NotFoundError

pytestmark = pytest.mark.vllm

QUERY = "Who wrote To Kill a Mockingbird?"
DOCS = [
    {"text": "Harper Lee wrote To Kill a Mockingbird, published in 1960.", "id": "a", "source": {"page": 1}},
    {"text": "Herman Melville wrote Moby-Dick.", "id": "b"},
    {"text": "The Eiffel Tower is in Paris.", "id": "c"},
    {"text": "Harper Lee was born in Monroeville, Alabama.", "id": "d"},
    {"text": "Bread needs flour, water, salt and yeast.", "id": "e"},
]


@pytest.fixture(scope="module")
def server(qwen3_server):
    """The tiny Qwen3-Reranker server tests/test_families.py uses too (conftest.ServerQueue: started once)."""
    return qwen3_server


def test_rerank_sync(server):
    with RerankClient(server.url) as client:
        response = client.rerank(QUERY, DOCS)
    assert response.model == server.model  # discovered from /v1/models
    assert sorted(r.index for r in response.results) == list(range(len(DOCS)))
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for r in response.results:
        assert r.document is DOCS[r.index]  # metadata comes back untouched
    assert response.usage.prompt_tokens > 0


def test_rerank_async_equals_sync(server):
    async def run():
        async with AsyncRerankClient(server.url) as client:
            return await client.rerank(QUERY, DOCS, top_n=3)

    async_response = asyncio.run(run())
    with RerankClient(server.url) as client:
        sync_response = client.rerank(QUERY, DOCS, top_n=3)
    assert len(async_response.results) == 3
    assert [(r.index, r.relevance_score) for r in async_response.results] == [
        (r.index, r.relevance_score) for r in sync_response.results
    ]


def test_chunked_results_equal_one_unchunked_request(server):
    docs = [f"Document {i}: " + DOCS[i % len(DOCS)]["text"] for i in range(23)]
    with (
        RerankClient(server.url, max_docs_per_request=1000) as whole,
        RerankClient(server.url, max_docs_per_request=4) as chunked,
    ):
        one = whole.rerank(QUERY, docs)
        many = chunked.rerank(QUERY, docs)
    assert one.requests == 1 and many.requests == 6
    assert [r.index for r in many.results] == [r.index for r in one.results]
    for a, b in zip(one.results, many.results, strict=True):
        assert a.relevance_score == pytest.approx(b.relevance_score, abs=1e-6)


def test_score_one_to_many_and_pairs(server):
    texts = [d["text"] for d in DOCS]
    with RerankClient(server.url) as client:
        ranked = {r.index: r.relevance_score for r in client.rerank(QUERY, texts).results}
        one_to_many = client.score(QUERY, texts)
        pairs = client.score([QUERY, "Where is the Eiffel Tower?"], texts[:2])
    assert one_to_many.scores == pytest.approx([ranked[i] for i in range(len(texts))], abs=1e-6)
    assert pairs.scores[0] == pytest.approx(ranked[0], abs=1e-6)
    assert len(pairs.scores) == 2


def test_instruction_reaches_the_template(server):
    texts = [d["text"] for d in DOCS]
    with RerankClient(server.url) as client:
        plain = client.rerank(QUERY, texts)
        instructed = client.rerank(QUERY, texts, instruction="Find the birthplace of the author")
    plain_scores = {r.index: r.relevance_score for r in plain.results}
    assert any(abs(r.relevance_score - plain_scores[r.index]) > 1e-3 for r in instructed.results)


def test_server_errors_carry_vllms_message(server):
    with RerankClient(server.url, max_retries=0) as client:
        with pytest.raises(BadRequestError) as exc:
            client.rerank(QUERY, ["a"], max_tokens_per_doc=10**7)
        assert "max_model_len" in exc.value.message
        with pytest.raises(NotFoundError, match="does not exist"):
            client.rerank(QUERY, ["a"], model="no-such-model")


# --- RAG framework adapters, with the real packages ---------------------------------------------------


def test_langchain_compressor_sync_and_async(server):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from rerank_kit.integrations.langchain import RerankKitCompressor

    docs = [Document(page_content=d["text"], metadata={"id": d["id"], "source": "kb"}) for d in DOCS]
    with RerankClient(server.url) as client:
        expected = client.rerank(QUERY, [d["text"] for d in DOCS], top_n=3)
        compressed = RerankKitCompressor(client=client, top_n=3).compress_documents(docs, QUERY)
    assert [d.metadata["id"] for d in compressed] == [DOCS[r.index]["id"] for r in expected.results]
    assert [d.metadata["relevance_score"] for d in compressed] == [r.relevance_score for r in expected.results]
    assert all(d.metadata["source"] == "kb" for d in compressed)
    assert "relevance_score" not in docs[0].metadata  # inputs are not mutated

    async def run():
        async with AsyncRerankClient(server.url) as aclient:
            return await RerankKitCompressor(async_client=aclient, top_n=3).acompress_documents(docs, QUERY)

    assert [d.metadata["id"] for d in asyncio.run(run())] == [d.metadata["id"] for d in compressed]


def test_llamaindex_postprocessor_sync_and_async(server):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank_kit.integrations.llamaindex import RerankKitPostprocessor

    nodes = [
        NodeWithScore(node=TextNode(text=d["text"], id_=d["id"], metadata={"source": "kb"}), score=0.0) for d in DOCS
    ]
    with RerankClient(server.url) as client:
        ranked = RerankKitPostprocessor(client=client, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    assert len(ranked) == 2
    assert ranked[0].score >= ranked[1].score
    assert all(n.node.metadata == {"source": "kb"} for n in ranked)

    async def run():
        async with AsyncRerankClient(server.url) as aclient:
            return await RerankKitPostprocessor(async_client=aclient, top_n=2).apostprocess_nodes(
                nodes, query_str=QUERY
            )

    assert [n.node.node_id for n in asyncio.run(run())] == [n.node.node_id for n in ranked]
