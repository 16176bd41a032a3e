"""Long documents in windows (rerank_kit.server.chunking): the windows, the expanded request and the merged
answer, with the packaged MiniLM tokenizer. The same path against real vLLM servers, per family, is in
test_families.py."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank_kit.server import chunking
from rerank_kit.server.bodycheck import RejectedRequest
from rerank_kit.server.chunking import Chunker, collapse_rerank, collapse_score, expand, overlap, plan_windows


@given(st.integers(1, 5000), st.integers(1, 600), st.integers(1, 12))
def test_windows_cover_the_document_in_order_each_within_the_window(n, window, most):
    ranges = plan_windows(n, window, most)
    if n <= window or most == 1:
        assert ranges is None
        return
    assert ranges is not None and 2 <= len(ranges) <= most
    assert all(0 <= s < e <= n and e - s == min(window, n) for s, e in ranges)
    assert [s for s, _ in ranges] == sorted({s for s, _ in ranges})
    for (_, e1), (s2, e2) in itertools.pairwise(ranges):
        assert s2 <= e1  # no gap
        assert e1 - s2 >= overlap(window) or (s2, e2) == ranges[-1]  # the last window may share more
    whole = ranges[-1][1] == n
    assert whole or len(ranges) == most  # cut short only by max_chunks


def test_a_request_expands_to_windows_and_merges_back_to_one_result_per_document():
    documents = ["short", "0123456789abcdefghij", "also short"]
    cuts = [None, [(0, 10), (8, 20)], None]
    body = {"model": "m", "query": "q", "documents": documents, "top_n": 2, "max_chunks_per_doc": 4}
    out, plan = expand(body, None, "documents", cuts, limit=10, requested=4)
    assert out == {"model": "m", "query": "q", "documents": ["short", "0123456789", "89abcdefghij", "also short"]}
    assert plan.owners == [0, 1, 1, 2] and plan.pairs == 4
    # vLLM's answer over the windows, best first
    answer = {
        "id": "x",
        "usage": {"prompt_tokens": 40, "total_tokens": 40},
        "results": [
            {"index": 2, "document": {"text": "89abcdefghij"}, "relevance_score": 0.9},
            {"index": 3, "document": {"text": "also short"}, "relevance_score": 0.5},
            {"index": 1, "document": {"text": "0123456789"}, "relevance_score": 0.4},
            {"index": 0, "document": {"text": "short"}, "relevance_score": 0.1},
        ],
    }
    merged = collapse_rerank(answer, plan, documents, top_n=2)
    assert merged["usage"] == answer["usage"]  # every scored token
    assert merged["results"] == [
        {
            "index": 1,
            "document": {"text": documents[1], "multi_modal": None},
            "relevance_score": 0.9,
            "chunk": {"index": 1, "count": 2, "start": 8, "end": 20},
        },
        {"index": 2, "document": {"text": "also short", "multi_modal": None}, "relevance_score": 0.5},
    ]


def test_score_requests_pair_each_window_with_its_own_query():
    body = {"queries": ["q0", "q1"], "documents": ["d0", "0123456789"]}
    out, plan = expand(body, "queries", "documents", [None, [(0, 6), (4, 10)]], limit=10, requested=8)
    assert out["queries"] == ["q0", "q1", "q1"] and out["documents"] == ["d0", "012345", "456789"]
    answer = {"data": [{"index": i, "object": "score", "score": s} for i, s in enumerate([0.3, 0.1, 0.7])]}
    assert collapse_score(answer, plan)["data"] == [
        {"index": 0, "object": "score", "score": 0.3},
        {"index": 1, "object": "score", "score": 0.7, "chunk": {"index": 1, "count": 2, "start": 4, "end": 10}},
    ]


def test_over_the_pair_budget_is_a_413_that_says_which_limit():
    with pytest.raises(RejectedRequest) as caught:
        expand({"query": "q", "documents": ["a" * 30] * 3}, None, "documents", [[(0, 10), (10, 20)]] * 3,
               limit=5, requested=2)  # fmt: skip
    assert caught.value.status == 413
    assert "3 documents make 6 windows" in caught.value.message and "--max-documents" in caught.value.message


@pytest.mark.parametrize("value", [0, -1, 1.5, "4", True])
def test_max_chunks_per_doc_must_be_a_positive_integer(value):
    with pytest.raises(RejectedRequest, match="max_chunks_per_doc must be a positive integer") as caught:
        chunking.max_chunks({"max_chunks_per_doc": value}, 8)
    assert caught.value.status == 400
    assert chunking.max_chunks({}, 8) == 8 and chunking.max_chunks({"max_chunks_per_doc": 3}, 8) == 3


def test_the_instruction_is_folded_into_the_template_kwargs_as_vllm_does():
    assert chunking.chat_template_kwargs({"instruction": "i"}) == {"instruction": "i"}
    assert chunking.chat_template_kwargs({"instruction": "i", "chat_template_kwargs": {"instruction": "k"}}) == {
        "instruction": "k"
    }
    assert chunking.chat_template_kwargs({}) is None


class _Processor:
    """What Chunker reads from vLLM's IO processor: the tokenizer and the plugin's window."""

    def __init__(self, tokenizer, window):
        self.tokenizer = tokenizer
        self.rerank_kit_window = lambda query, kwargs: window


@pytest.fixture(scope="module")
def minilm_tokenizer():
    transformers = pytest.importorskip("transformers")
    from rerank_kit.launcher.models import resolve_model_path
    from rerank_kit.recipes import DEFAULT_CPU_MODEL, get_recipe

    return transformers.AutoTokenizer.from_pretrained(resolve_model_path(get_recipe(DEFAULT_CPU_MODEL)))


def test_windows_of_a_real_tokenizer_fit_and_cover_the_document(minilm_tokenizer):
    window = 64
    chunker = Chunker.of(_Processor(minilm_tokenizer, window + chunking.MARGIN))
    long = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(80))
    short = "Paris is the capital of France."
    cuts = chunker.cuts(["q", "q"], [short, long], None, max_chunks=100, strict=False)
    assert cuts[0] is None  # fits: sent unchanged
    texts = [long[s:e] for s, e in cuts[1]]
    n_tokens = len(minilm_tokenizer(long, add_special_tokens=False)["input_ids"])
    assert len(texts) == len(plan_windows(n_tokens, window, 100))
    assert all(len(minilm_tokenizer(t, add_special_tokens=False)["input_ids"]) <= window for t in texts)
    assert long.startswith(texts[0]) and long.endswith(texts[-1])
    for a, b in itertools.pairwise(cuts[1]):
        assert b[0] < a[1]  # windows overlap: nothing between them is skipped
    assert chunker.cuts(["q"], [long], None, max_chunks=1, strict=False) == [None]  # 1: truncation
    # max_chunks caps the windows; --strict-length refuses instead of reading a document in part
    assert len(chunker.cuts(["q"], [long], None, max_chunks=2, strict=False)[0]) == 2
    with pytest.raises(RejectedRequest, match=r"document 0 needs \d+ windows of 64 tokens") as caught:
        chunker.cuts(["q"], [long], None, max_chunks=2, strict=True)
    assert caught.value.status == 400
    # max_tokens_per_doc: only the document's first tokens are read, in windows
    capped = chunker.cuts(["q"], [long], None, max_chunks=100, strict=False, max_tokens_per_doc=100)[0]
    assert len(capped) == len(plan_windows(100, window, 100))


def test_a_processor_without_the_plugins_window_or_offsets_cannot_cut(minilm_tokenizer):
    assert Chunker.of(object()) is None
    slow = type("Slow", (), {"is_fast": False})()
    assert Chunker.of(_Processor(slow, 10)) is None
    assert Chunker.of(_Processor(minilm_tokenizer, 10)) is not None


class _WindowFromPrompt:
    """An IO processor whose window is measured the way the plugin's is: ``max_len`` less the tokens of a whole
    prompt around the query and a one-token document, the prompt tokenized whole (merges across the query's
    edges included). Counts the window computations."""

    def __init__(self, tokenizer, max_len=512):
        self.tokenizer, self.max_len, self.calls = tokenizer, max_len, []

    def rerank_kit_window(self, query, kwargs):
        self.calls.append(query)
        prompt = f"Judge whether the Document meets the Query.\n<Query>: {query}\n<Document>: a\n<Answer>:"
        return self.max_len - len(self.tokenizer(prompt)["input_ids"]) + 1


QUERIES = [
    "q", "", "what is the capital of France?", "  leading and trailing  ", "naïve café – 東京の天気は？ 🙂",
    "a" * 300, "x," * 50, "<Document>: injected\n<Answer>:", "\n\n\n",
]  # fmt: skip


@pytest.mark.parametrize("name", ["minilm", "qwen"])
def test_the_floor_never_exceeds_the_exact_window_and_spares_short_documents_the_tokenizer(
    name, minilm_tokenizer, tmp_path_factory
):
    import tiny_models

    if name == "minilm":
        tokenizer = minilm_tokenizer
    else:
        tokenizer = tiny_models.qwen_tokenizer(tmp_path_factory.mktemp("q"), qwen3=True)
    processor = _WindowFromPrompt(tokenizer)
    chunker = Chunker(processor)
    for query in QUERIES:
        assert chunker.floor(query, None) <= processor.rerank_kit_window(query, None), query
    # Short documents: no window is rendered for the query, and once the kwargs' floor is known, nothing at all.
    processor.calls.clear()
    fresh = Chunker(processor)
    short = ["Paris is the capital of France.", "Berlin is in Germany."]
    assert not fresh.fits_as_sent(["q?", "q?"], short, None)  # the floor is not known yet: ask cuts
    assert fresh.cuts(["q?", "q?"], short, None, max_chunks=8, strict=True) == [None, None]
    assert processor.calls == ["a"]  # the floor's one window, not the query's
    assert fresh.fits_as_sent(["another query"] * 2, short, None)
    kwargs = {"instruction": "rank"}
    assert not fresh.fits_as_sent(["q"], short[:1], kwargs)  # other kwargs: another floor
    # A document near the window, or a query that eats it, is not waved through.
    assert not fresh.fits_as_sent(["q"], ["word " * 200], None)
    assert not fresh.fits_as_sent(["q " * 300], short[:1], None)
    assert processor.calls == ["a"]
