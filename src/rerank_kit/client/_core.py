"""Request building, response parsing and chunk/merge, shared by both clients. No I/O, no
environment, no locks.

`client.RerankClient` and `client.AsyncRerankClient` only send what this module builds and feed
back what they receive; retry decisions are in `_retry`, defaults and configuration in `_config`.

    >>> plan = plan_rerank("q", ["a", "b", "a"], max_docs_per_request=100)
    >>> plan.payload(0, "m")
    {'model': 'm', 'query': 'q', 'documents': ['a', 'b']}
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import orjson
import pydantic

from rerank_kit.client._config import CHUNKS_HEADER, DEFAULT_MAX_DOCS_PER_REQUEST, MODELS_PATH, VERSION_PATH
from rerank_kit.client.images import ImageDocument, is_image
from rerank_kit.errors import APIError, DocumentsTruncatedWarning, InvalidInputError
from rerank_kit.types import (
    HealthStatus,
    RerankResponse,
    RerankResult,
    ScoreResponse,
    Usage,
    WireModelList,
    WireRerankResponse,
    WireScoreResponse,
    document_text,
)

# --- wire encoding ---------------------------------------------------------------------------------

JSON_HEADERS = {"content-type": "application/json"}


def encode_json(body: Any) -> bytes:
    """A request body. orjson encodes a 100-document request ~8x faster than the json module (which
    httpx uses), and vLLM's answers echo every document, so this is most of a request's CPU time.
    What orjson refuses (a lone surrogate in a string, say) goes through the json module, escaped."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body, allow_nan=False).encode()


def request_body(body: Any) -> tuple[bytes | None, dict[str, str] | None]:
    """(content, headers) for httpx: ``body`` encoded as JSON, or nothing for a request without one."""
    return (None, None) if body is None else (encode_json(body), JSON_HEADERS)


def decode_json(content: bytes, url: str) -> Any:
    """A 2xx answer's JSON; NaN/Infinity (which orjson refuses) through the json module."""
    try:
        return orjson.loads(content)
    except ValueError:  # orjson.JSONDecodeError
        pass
    try:
        return json.loads(content)
    except ValueError:
        raise APIError(f"{url} answered with a body that is not JSON: {content[:200]!r}") from None


# --- documents --------------------------------------------------------------------------------------


def _texts(documents: Sequence[Any], text_key: str) -> list[Any]:
    """Each document as sent: its text, or an image's wire form (``client.images``)."""
    if all(type(doc) is str for doc in documents):  # the common case, without a call per document
        return list(documents)
    texts: list[Any] = []
    for i, doc in enumerate(documents):
        if is_image(doc):
            texts.append(ImageDocument.of(doc).wire())
            continue
        try:
            texts.append(document_text(doc, text_key))
        except TypeError as exc:
            raise InvalidInputError(
                f"document {i} is {exc}: pass a string, a dict with a {text_key!r} string, an object with a .text "
                "or .page_content string, or an image (pathlib.Path, bytes, a PIL image, ImageDocument)"
            ) from None
    return texts


def _key(document: Any) -> Any:
    """What makes two documents as sent the same (an image's wire form is a dict: its URL)."""
    return document if type(document) is str else document["content"][0]["image_url"]["url"]


# --- rerank: prepare, chunk, merge ----------------------------------------------------------------------


@dataclass(frozen=True)
class RerankPlan:
    """One rerank call turned into requests: unique texts, who owns each, and the chunks to send."""

    query: str
    documents: Sequence[Any]
    unique_texts: list[Any]  # a text, or an image's wire form
    owners: list[list[int]] | None  # unique text index -> indices in the caller's list; None: no duplicates
    chunks: list[list[int]]  # each chunk: unique text indices, in order
    top_n: int | None
    return_documents: bool
    extra: dict[str, Any]

    def payload(self, chunk: int, model: str) -> dict[str, Any]:
        texts = [self.unique_texts[i] for i in self.chunks[chunk]]
        return {"model": model, "query": self.query, "documents": texts, **self.extra}


def plan_rerank(
    query: str,
    documents: Sequence[Any],
    top_n: int | None = None,
    instruction: str | None = None,
    max_tokens_per_doc: int | None = None,
    return_documents: bool = True,
    max_chunks_per_doc: int | None = None,
    *,
    max_docs_per_request: int = DEFAULT_MAX_DOCS_PER_REQUEST,
    text_key: str = "text",
    whole: bool = False,
) -> RerankPlan:
    """Validate a rerank call and split it into requests. Identical documents are scored once.

    The options after ``documents`` are ``rerank()``'s, in its order. ``whole``: one request with every
    document as given, duplicates included (a listwise model scores each document against the whole list:
    splitting it or leaving out a duplicate changes every score).
    """
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, not {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query is empty: pass the question to rank the documents against")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError(
            "documents must be a list (of strings, dicts with 'text', objects with .text, or images)"
        )
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise InvalidInputError(f"top_n must be an integer >= 1 (or None for all results), not {top_n!r}")
    if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
        raise InvalidInputError("max_tokens_per_doc must be >= 1 (or None for the server's default)")
    if max_chunks_per_doc is not None and (type(max_chunks_per_doc) is not int or max_chunks_per_doc < 1):
        raise InvalidInputError(
            f"max_chunks_per_doc must be an integer >= 1 (1: each document's first window only; None: the "
            f"server's default), not {max_chunks_per_doc!r}"
        )
    if instruction is not None and not instruction.strip():
        raise InvalidInputError("instruction is empty: pass None or a task description")
    texts = _texts(documents, text_key)
    keys = texts if all(type(t) is str for t in texts) else [_key(t) for t in texts]
    unique: list[Any] = texts
    owners: list[list[int]] | None = None
    if not whole and len(set(keys)) < len(keys):
        first_seen: dict[Any, int] = {}
        unique, owners = [], []
        for i, (text, key) in enumerate(zip(texts, keys, strict=True)):
            slot = first_seen.get(key)
            if slot is None:
                first_seen[key] = slot = len(unique)
                unique.append(text)
                owners.append([])
            owners[slot].append(i)
    n_chunks = 1 if whole else max(1, math.ceil(len(unique) / max_docs_per_request))
    size = math.ceil(len(unique) / n_chunks) if unique else 0  # balanced chunks
    chunks = [list(range(start, min(start + size, len(unique)))) for start in range(0, len(unique), size or 1)]
    extra: dict[str, Any] = {}
    if instruction is not None:
        extra["instruction"] = instruction
    if max_tokens_per_doc is not None:
        extra["max_tokens_per_doc"] = max_tokens_per_doc
    if max_chunks_per_doc is not None:
        extra["max_chunks_per_doc"] = max_chunks_per_doc
    return RerankPlan(query, documents, unique, owners, chunks, top_n, return_documents, extra)


def _parse(model_cls: type[pydantic.BaseModel], body: Any, what: str) -> Any:
    try:
        return model_cls.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise APIError(f"unexpected {what} response from the server ({where}: {first.get('msg')})") from exc


def _rerank_wire(body: Any) -> tuple[str, int, int, list[tuple[int, float]]]:
    """(model, prompt tokens, total tokens, [(index, score)]) of a /rerank answer.

    A hand-written fast path for the shape vLLM sends (pydantic costs ~2 us per result); anything
    else goes through the pydantic wire model, which accepts what it can and names what is wrong.
    """
    try:
        pairs = [(r["index"], r["relevance_score"]) for r in body["results"]]
        usage = body.get("usage") or {}
        model, prompt, total = body.get("model") or "", usage.get("prompt_tokens", 0), usage.get("total_tokens", 0)
        if all(type(i) is int and type(s) is float for i, s in pairs) and type(prompt) is int and type(total) is int:
            return model, prompt, total, pairs
    except (KeyError, TypeError, AttributeError):
        pass
    wire = _parse(WireRerankResponse, body, "rerank")
    pairs = [(r.index, r.relevance_score) for r in wire.results]
    return wire.model, wire.usage.prompt_tokens, wire.usage.total_tokens, pairs


# RerankResult._make without its Python frame: ~0.06 us instead of ~0.25 us per result
_new_result = functools.partial(tuple.__new__, RerankResult)


def merge_rerank(plan: RerankPlan, bodies: Sequence[Any], model: str) -> RerankResponse:
    """Map each chunk's results back to the caller's indices, sort by score, cut to top_n."""
    scores: list[float | None] = [None] * len(plan.documents)
    prompt = total = 0
    served_model = model
    owners = plan.owners
    scored: int | None = 0
    for chunk, body in zip(plan.chunks, bodies, strict=True):
        windows = body.pop(CHUNKS_KEY, None) if isinstance(body, dict) else None
        scored = None if windows is None or scored is None else scored + windows[0]
        wire_model, wire_prompt, wire_total, pairs = _rerank_wire(body)
        served_model = wire_model or served_model
        prompt += wire_prompt
        total += wire_total
        size = len(chunk)
        for index, score in pairs:
            if not 0 <= index < size:
                raise APIError(f"the server returned index {index} for a request of {size} documents")
            if owners is None:
                scores[chunk[index]] = score
            else:
                for original in owners[chunk[index]]:
                    scores[original] = score
    asked = plan.extra.get("max_chunks_per_doc", 1)
    if scored is None and asked > 1:
        warnings.warn(truncation_notice(asked), DocumentsTruncatedWarning, stacklevel=3)
    if None in scores:
        missing = [i for i, s in enumerate(scores) if s is None]
        raise APIError(f"the server returned no score for documents {missing[:10]}")
    # stable even with reverse=True: equal scores keep the caller's order
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)  # type: ignore[arg-type]
    if plan.top_n is not None:
        order = order[: plan.top_n]
    sorted_scores = map(scores.__getitem__, order)
    sorted_docs = map(plan.documents.__getitem__, order) if plan.return_documents else repeat(None)
    results = list(map(_new_result, zip(order, sorted_scores, sorted_docs, strict=False)))  # repeat() is endless
    return RerankResponse(
        model=served_model,
        results=results,
        usage=Usage(prompt_tokens=prompt, total_tokens=total),
        requests=len(plan.chunks),
        pairs=scored,
    )


# Where ``Attempt.answer`` puts a response's CHUNKS_HEADER, parsed: (pairs scored, max_chunks_per_doc applied).
CHUNKS_KEY = CHUNKS_HEADER


def chunks_header(value: str | None) -> tuple[int, int] | None:
    """(pairs scored, windows per document at most) from a rerank-kit server's CHUNKS_HEADER; None without one.

    >>> chunks_header("pairs=240; max=8"), chunks_header(None), chunks_header("junk")
    ((240, 8), None, None)
    """
    if not value:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in value.split(";"))
    try:
        return int(fields["pairs"]), int(fields["max"])
    except (KeyError, ValueError):
        return None


def truncation_notice(max_chunks_per_doc: int) -> str:
    """What the client says when it asked for windows and the server truncates instead."""
    return (
        f"the server does not score long documents in windows (no {CHUNKS_KEY} header: plain vLLM, or rerank-kit's "
        f"plugin off): max_chunks_per_doc={max_chunks_per_doc} had no effect, and documents longer than the "
        "server's --max-model-len were truncated to their first window. Serve the model with `rerank-kit serve` "
        "(vLLM >= 0.27) to score every part of them"
    )


def empty_rerank(model: str) -> RerankResponse:
    return RerankResponse(model=model, results=[], requests=0)


# --- score and models --------------------------------------------------------------------------------


def score_payload(
    queries: str | Sequence[str], documents: str | Sequence[str], model: str
) -> tuple[dict[str, Any], int]:
    """The /v1/score request for 1:1, 1:N or N:N pairs, and how many scores it returns."""
    q = [queries] if isinstance(queries, str) else list(queries)
    d = [documents] if isinstance(documents, str) else list(documents)
    for name, items in (("queries", q), ("documents", d)):
        if not items:
            raise InvalidInputError(f"{name} is empty: pass at least one")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidInputError(f"{name}[{i}] is {type(item).__name__}: pass strings")
    if any(not item.strip() for item in q):
        raise InvalidInputError("a query is empty: pass the question text")
    if len(q) > 1 and len(q) != len(d):
        raise InvalidInputError(
            f"{len(q)} queries and {len(d)} documents: pass one query (1:N) or as many queries as documents (N:N)"
        )
    payload = {"model": model, "queries": q[0] if len(q) == 1 else q, "documents": d}
    return payload, len(d)


def parse_score(body: Any, expected: int, model: str) -> ScoreResponse:
    wire = _parse(WireScoreResponse, body, "score")
    scores: list[float | None] = [None] * expected
    for item in wire.data:
        if not 0 <= item.index < expected:
            raise APIError(f"the server returned score index {item.index} for {expected} pairs")
        scores[item.index] = item.score
    if any(s is None for s in scores):
        raise APIError("the server returned fewer scores than pairs")
    return ScoreResponse(
        model=wire.model or model,
        scores=scores,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=wire.usage.prompt_tokens, total_tokens=wire.usage.total_tokens),
    )


def parse_models(body: Any) -> list[str]:
    return [m.id for m in _parse(WireModelList, body, "models").data]


def served_names(served: dict[str, list[str]], error: APIError | None) -> list[str]:
    """Every model name several servers serve, each once (``served``: name -> URLs); when none
    answered, the ``error`` asking them ended with."""
    if not served and error is not None:
        raise error
    return list(served)


def first_model(body: Any) -> str:
    """The model to send when the caller named none: the first one /v1/models lists."""
    names = parse_models(body)
    if not names:
        raise APIError(f"the server lists no models at {MODELS_PATH}")
    return names[0]


# --- health ------------------------------------------------------------------------------------------


def health_status(
    url: str,
    status: int | None = None,
    latency_ms: float | None = None,
    models: bytes = b"",
    version: bytes = b"",
    *,
    error: Exception | None = None,
) -> HealthStatus:
    """What ``health()`` reports for one server from what it answered: the status code of /health
    and how long it took, then (asked only after a 200) the bodies of /v1/models and /version; or
    the ``error`` that stopped the probe. An answer that cannot be read makes the server unhealthy.

        >>> health_status("http://h:8000", 200, 1.5, b'{"data": [{"id": "m"}]}', b'{"version": "0.32.0"}').version
        '0.32.0'
    """
    if error is not None:
        return HealthStatus(url=url, healthy=False, error=str(error))
    if status != 200:
        return HealthStatus(url=url, healthy=False, latency_ms=latency_ms)
    try:
        names = parse_models(decode_json(models, url + MODELS_PATH))
        info = decode_json(version, url + VERSION_PATH)
    except APIError as exc:
        return HealthStatus(url=url, healthy=False, error=str(exc))
    found = info.get("version") if isinstance(info, dict) else None
    return HealthStatus(
        url=url,
        healthy=True,
        models=names,
        version=found if isinstance(found, str) else None,
        latency_ms=latency_ms,
    )
