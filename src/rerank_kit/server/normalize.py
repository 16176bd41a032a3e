"""Rewrite a rerank request from a third-party client into the body vLLM's rerank routes accept, meaning unchanged.

Third-party clients speak Cohere's or Jina's rerank API; vLLM serves the same shape at /rerank, /v1/rerank and
/v2/rerank, but its request model (``RerankRequest``, vLLM 0.32) types ``top_n`` and ``max_tokens_per_doc`` as
plain integers, refuses ``max_tokens_per_doc >= max_model_len``, and reads a document object as multimodal
content. The guard calls :func:`normalize_rerank_body` before vLLM sees a body. Each normalisation, and the
client that needs it (measured with the released packages; the tests in tests/test_third_party.py run them):

1. ``"top_n": null`` is dropped. Cohere's API reads null as "every document", as vLLM's default (0) does.
   Needed by langchain-cohere ``CohereRerank(top_n=None)`` and the Cohere SDK's ``rerank(top_n=None)``, which
   send the null; vLLM answers 400 "body.top_n: Input should be a valid integer".
2. ``"max_tokens_per_doc": null`` is dropped: null asks for the server's default, which is what leaving it out
   gives. Needed by langchain-cohere ``CohereRerank`` (every call: it passes ``max_tokens_per_doc=None`` to the
   Cohere SDK, which sends it); vLLM answers 400 "body.max_tokens_per_doc: Input should be a valid integer".
3. On /v2/rerank (Cohere's v2 API, whose default cap is 4096), ``max_tokens_per_doc`` at or above the
   model's ``max_model_len`` is dropped, when the caller knows ``max_model_len``; /rerank and /v1/rerank keep
   vLLM's own 400 for it. Such a cap cannot shorten what the model reads: the query-document pair is cut to
   ``max_model_len`` anyway (or refused, with ``--strict-length``, with the cap or without it). Needed by
   Haystack's cohere-haystack ``CohereRanker``, which sends its default 4096 on every call; vLLM answers 400
   "max_tokens_per_doc (4096) must be less than max_model_len (256)." for any model of 4096 tokens or fewer.
4. Documents given as objects with a ``"text"`` string (Cohere's v1 API: ``cohere.Client().rerank(documents=
   [{"text": ...}])``, also Jina's object form) become those strings, when no ``rank_fields`` other than
   ``["text"]`` is given: Cohere v1 ranks an object by its ``text`` field unless ``rank_fields`` says otherwise.
   vLLM reads a mapping as multimodal ``{"content": [...]}`` and answers 400 "body.documents.0.content: Field
   required". Results come back with ``{"text": ...}`` as their document, not the whole object.

Nothing else changes: fields vLLM ignores (``return_documents``, ``rank_fields``) stay, ``max_chunks_per_doc`` is
the guard's (``server.chunking``),
and an unknown or wrong non-null value is left for vLLM to refuse with its own, clearer, error. Other paths
(/score, /v1/score, ...) come back untouched: no client sends them these shapes.

    >>> normalize_rerank_body("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": None})
    ({'query': 'q', 'documents': ['a']}, ['dropped "max_tokens_per_doc": null (the server default)'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rerank_kit._contract import RERANK_PATHS

# Cohere's v2 API, where max_tokens_per_doc defaults to 4096 (Haystack sends that default every time).
COHERE_V2_PATH = "/v2/rerank"
# Optional integer fields RerankRequest types without None, where a client's null means "the default".
_NULL_MEANS_DEFAULT = {
    "top_n": "every document",
    "max_tokens_per_doc": "the server default",
}


def normalize_rerank_body(
    path: str, body: dict[str, Any], *, max_model_len: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The body vLLM accepts for a POST to ``path``, and one line per change made (empty: ``body`` itself).

    ``body`` is never modified; a changed body is a new dict. ``max_model_len`` (the served model's) enables
    dropping a ``max_tokens_per_doc`` that vLLM would refuse for reaching it; None leaves that field alone.

        >>> normalize_rerank_body("/v1/rerank", {"query": "q", "documents": [{"text": "a", "id": 7}]})[0]
        {'query': 'q', 'documents': ['a']}
        >>> normalize_rerank_body("/v2/rerank", {"max_tokens_per_doc": 4096}, max_model_len=512)[1]
        ['dropped "max_tokens_per_doc": 4096 (not below max_model_len 512: the pair is cut to 512 tokens anyway)']
        >>> normalize_rerank_body("/v1/score", {"max_tokens_per_doc": None})
        ({'max_tokens_per_doc': None}, [])
    """
    if path not in RERANK_PATHS or not isinstance(body, dict):
        return body, []
    out = dict(body)
    changes: list[str] = []
    for name, meaning in _NULL_MEANS_DEFAULT.items():
        if name in out and out[name] is None:
            del out[name]
            changes.append(f'dropped "{name}": null ({meaning})')
    cap = out.get("max_tokens_per_doc")
    # bool is an int to Python, not to vLLM's pydantic model: leave true/false for vLLM to refuse.
    if path == COHERE_V2_PATH and max_model_len is not None and type(cap) is int and cap >= max_model_len:
        del out["max_tokens_per_doc"]
        changes.append(
            f'dropped "max_tokens_per_doc": {cap} (not below max_model_len {max_model_len}: '
            f"the pair is cut to {max_model_len} tokens anyway)"
        )
    texts = _document_texts(out.get("documents"), out.get("rank_fields"))
    if texts is not None:
        out["documents"] = texts
        changes.append(f'documents: {{"text": ...}} objects -> their text ({len(texts)} documents)')
    return (out, changes) if changes else (body, [])


def _document_texts(documents: Any, rank_fields: Any) -> list[str] | None:
    """The texts of Cohere-v1 style ``{"text": ...}`` documents; None when there is nothing to flatten.

    None when any document is neither a string nor such an object (vLLM's multimodal ``{"content": ...}``
    included), or when ``rank_fields`` asks for fields other than ``text`` (Cohere joins those in its own
    format, which this cannot reproduce).

        >>> _document_texts(["a", {"text": "b"}], None)
        ['a', 'b']
        >>> _document_texts([{"title": "t", "text": "b"}], ["title", "text"]) is None
        True
        >>> _document_texts([{"content": [{"type": "text", "text": "b"}]}], None) is None
        True
    """
    if not isinstance(documents, list) or not any(isinstance(d, Mapping) for d in documents):
        return None
    if rank_fields is not None and rank_fields != ["text"]:
        return None
    texts = []
    for document in documents:
        if isinstance(document, str):
            texts.append(document)
        elif isinstance(document, Mapping) and "content" not in document and isinstance(document.get("text"), str):
            texts.append(document["text"])
        else:
            return None
    return texts
