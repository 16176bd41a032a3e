"""normalize_rerank_body: the bodies third-party clients really send (captured from the released packages, see
the module docstring) become bodies vLLM's own request model accepts, with their meaning unchanged; everything
else is left alone. The last tests run vLLM's RerankRequest itself (no server) on the same bodies."""

from __future__ import annotations

import copy
import importlib.util
from types import SimpleNamespace

import pytest

from rerank_kit.server.normalize import RERANK_PATHS, normalize_rerank_body

DOCS = ["vLLM is an inference engine.", "Paris is in France."]
BASE = {"model": "m", "query": "What is vLLM?", "documents": DOCS}

# (client, path, body) exactly as each client sent it to a capture server (cohere 5.21.1, langchain-cohere 0.6.0,
# llama-index-postprocessor-cohere-rerank 0.4.0 and 0.10.0, litellm 1.97.0 and 1.106.2, cohere-haystack 11.0.0).
SENT = {
    "cohere.Client": ("/v1/rerank", {**BASE, "top_n": 2}),
    "cohere.Client dict documents": ("/v1/rerank", {**BASE, "documents": [{"text": d} for d in DOCS]}),
    "cohere.Client v1 options": ("/v1/rerank", {**BASE, "return_documents": True, "max_chunks_per_doc": 5}),
    "cohere.ClientV2": ("/v2/rerank", {**BASE, "top_n": 2}),
    "cohere.ClientV2 top_n=None": ("/v2/rerank", {**BASE, "top_n": None}),
    "langchain-cohere CohereRerank": ("/v2/rerank", {**BASE, "top_n": 2, "max_tokens_per_doc": None}),
    "langchain-cohere top_n=None": ("/v2/rerank", {**BASE, "top_n": None, "max_tokens_per_doc": None}),
    "llama-index CohereRerank 0.4": ("/v1/rerank", {**BASE, "top_n": 2}),
    "llama-index CohereRerank 0.10": ("/v2/rerank", {**BASE, "top_n": 2}),
    "litellm hosted_vllm/": ("/rerank", {**BASE, "top_n": 2, "return_documents": True}),
    "litellm cohere/": ("/v2/rerank", {**BASE, "top_n": 2, "return_documents": True}),
    "haystack CohereRanker": ("/v2/rerank", {**BASE, "top_n": 2, "max_tokens_per_doc": 4096}),
    "requests, Jina's shape": ("/v1/rerank", {**BASE, "top_n": 2}),
}
# What vLLM should receive for each (the same body where nothing needs changing), for a 256-token model.
EXPECTED = {
    **{name: body for name, (_, body) in SENT.items()},
    "cohere.Client dict documents": BASE,
    "cohere.ClientV2 top_n=None": BASE,
    "langchain-cohere CohereRerank": {**BASE, "top_n": 2},
    "langchain-cohere top_n=None": BASE,
    "haystack CohereRanker": {**BASE, "top_n": 2},
}
MAX_MODEL_LEN = 256


@pytest.mark.parametrize("client", SENT)
def test_each_clients_body_becomes_what_vllm_should_get(client):
    path, body = SENT[client]
    sent = copy.deepcopy(body)
    out, changes = normalize_rerank_body(path, body, max_model_len=MAX_MODEL_LEN)
    assert out == EXPECTED[client]
    assert body == sent, "the caller's body must not be modified"
    assert bool(changes) == (out != body)
    if not changes:
        assert out is body, "an unchanged body comes back as the same object, so the guard can forward its bytes"


def test_each_change_is_reported_once_in_words():
    body = {**BASE, "documents": [{"text": "a"}], "top_n": None, "max_tokens_per_doc": None}
    _, changes = normalize_rerank_body("/v2/rerank", body)
    assert changes == [
        'dropped "top_n": null (every document)',
        'dropped "max_tokens_per_doc": null (the server default)',
        'documents: {"text": ...} objects -> their text (1 documents)',
    ]


@pytest.mark.parametrize("path", sorted(RERANK_PATHS))
def test_every_rerank_route_is_normalised(path):
    assert normalize_rerank_body(path, {**BASE, "max_tokens_per_doc": None})[0] == BASE


@pytest.mark.parametrize(
    "path", ["/score", "/v1/score", "/v1/embeddings", "/pooling", "/tokenize", "/v1/rerank/", "/V1/rerank", ""]
)
def test_other_paths_are_left_alone(path):
    body = {**BASE, "top_n": None, "max_tokens_per_doc": None, "documents": [{"text": "a"}]}
    assert normalize_rerank_body(path, body, max_model_len=8)[0] is body


@pytest.mark.parametrize(
    ("cap", "max_model_len", "kept"),
    [
        (4096, 256, False),  # Haystack's default on a 256-token model: vLLM would refuse it
        (256, 256, False),  # vLLM refuses a cap equal to max_model_len too ("must be less than")
        (255, 256, True),  # below: it really shortens documents, so it stays
        (4096, 8192, True),
        (4096, None, True),  # max_model_len unknown: nothing to decide with
        (0, 256, True),  # vLLM's own "no cap"
        (-1, 256, True),  # wrong values are vLLM's to refuse, with its own message
        (True, 1, True),
        ("4096", 256, True),
    ],
)
def test_a_cap_is_dropped_only_where_vllm_would_refuse_it_for_reaching_max_model_len(cap, max_model_len, kept):
    body = {**BASE, "max_tokens_per_doc": cap}
    out, changes = normalize_rerank_body("/v2/rerank", body, max_model_len=max_model_len)
    assert ("max_tokens_per_doc" in out) == kept
    assert bool(changes) != kept


@pytest.mark.parametrize(
    "documents",
    [
        ["a", "b"],  # nothing to flatten
        [{"text": "a"}, {"title": "no text"}],  # one object without text: vLLM's error, not a guess
        [{"text": "a"}, {"text": 7}],
        [{"content": [{"type": "text", "text": "a"}]}],  # vLLM's own multimodal form
        [{"text": "a", "content": [{"type": "text", "text": "a"}]}],
        [{"text": "a"}, ["b"]],
        "a",
        [],
    ],
)
def test_documents_that_are_not_all_text_objects_are_left_alone(documents):
    body = {**BASE, "documents": documents}
    assert normalize_rerank_body("/v1/rerank", body)[0] is body


def test_text_objects_are_flattened_keeping_order_and_strings():
    body = {**BASE, "documents": ["a", {"text": "b", "id": 7}, {"text": ""}]}
    assert normalize_rerank_body("/v1/rerank", body)[0]["documents"] == ["a", "b", ""]


@pytest.mark.parametrize(("rank_fields", "flattened"), [(None, True), (["text"], True), (["title", "text"], False)])
def test_rank_fields_other_than_text_keep_the_objects(rank_fields, flattened):
    # Cohere v1 joins the rank_fields of each object in its own format; rerank-kit cannot reproduce it.
    body = {**BASE, "documents": [{"title": "t", "text": "a"}], "rank_fields": rank_fields}
    out, _ = normalize_rerank_body("/v1/rerank", body)
    assert (out["documents"] == ["a"]) == flattened
    assert out["rank_fields"] == rank_fields


@pytest.mark.parametrize(
    "extra",
    [
        {"return_documents": False},
        {"max_chunks_per_doc": 10},
        {"top_n": 0},
        {"top_n": -1},
        {"priority": None},
        {"request_id": None},
        {"max_tokens_per_query": None},
        {"unknown": None},
    ],
)
def test_other_fields_and_their_nulls_are_left_for_vllm(extra):
    body = {**BASE, **extra}
    assert normalize_rerank_body("/v1/rerank", body, max_model_len=512)[0] is body


@pytest.mark.parametrize("body", [[1, 2], "text", None, 3])
def test_a_body_that_is_not_an_object_is_returned_as_is(body):
    assert normalize_rerank_body("/v1/rerank", body) == (body, [])  # type: ignore[arg-type]


# --- against vLLM's own request model (imports vLLM, starts nothing) ----------------------------------------

requires_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


@pytest.fixture(scope="module")
def vllm_rerank():
    """vLLM's RerankRequest validation and its max_tokens_per_doc check (ScoringIOProcessor._validate_token_limit,
    vLLM 0.32), which refuses a cap of max_model_len or more at request time with a 400."""
    from vllm.entrypoints.pooling.scoring.io_processor import ScoringIOProcessor
    from vllm.entrypoints.pooling.scoring.protocol import RerankRequest

    model = SimpleNamespace(model_config=SimpleNamespace(max_model_len=MAX_MODEL_LEN))

    def accept(body: dict) -> None:
        request = RerankRequest.model_validate(body)
        if request.max_tokens_per_doc:
            ScoringIOProcessor._validate_token_limit(model, request.max_tokens_per_doc, "max_tokens_per_doc")

    return accept


@requires_vllm
@pytest.mark.parametrize("client", SENT)
def test_vllm_accepts_every_normalised_body(vllm_rerank, client):
    path, body = SENT[client]
    vllm_rerank(normalize_rerank_body(path, body, max_model_len=MAX_MODEL_LEN)[0])


@requires_vllm
@pytest.mark.parametrize("client", [c for c in SENT if EXPECTED[c] != SENT[c][1]])
def test_vllm_refuses_those_bodies_without_normalising(vllm_rerank, client):
    # If this starts failing, vLLM accepts the client's body itself and the normalisation can go.
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        vllm_rerank(SENT[client][1])


def test_a_cap_at_max_model_len_keeps_vllms_400_outside_cohere_v2():
    body = {**BASE, "max_tokens_per_doc": 4096}
    assert normalize_rerank_body("/v1/rerank", body, max_model_len=256)[0] is body
    assert "max_tokens_per_doc" not in normalize_rerank_body("/v2/rerank", body, max_model_len=256)[0]
