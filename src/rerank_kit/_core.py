"""The logic both clients share, with no I/O: configuration, validation, request building, response
parsing, chunk/merge, retry decisions and replica selection.

`client.RerankClient` and `client.AsyncRerankClient` only send what this module builds and feed
back what they receive.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import orjson
import pydantic

from rerank_kit.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    ConfigError,
    InternalServerError,
    InvalidInputError,
    RateLimitError,
    RequestTimeoutError,
    status_error,
)
from rerank_kit.types import (
    RerankResponse,
    RerankResult,
    ScoreResponse,
    Usage,
    WireModelList,
    WireRerankResponse,
    WireScoreResponse,
)

logger = logging.getLogger("rerank_kit")

# --- defaults (one place) ----------------------------------------------------------------------------

DEFAULT_TIMEOUT = 60.0  # seconds to wait for a response (a long list on a CPU server is slow)
DEFAULT_CONNECT_TIMEOUT = 5.0
# Retries with backoff reach ~60 s of waiting in total: long enough for a CPU server to restart.
DEFAULT_MAX_RETRIES = 8
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MAX_RETRY_AFTER = 60.0  # never sleep longer than this for one Retry-After
# Documents per HTTP request; longer lists are split, sent concurrently and merged.
DEFAULT_MAX_DOCS_PER_REQUEST = 100
DEFAULT_MAX_CONCURRENCY = 8  # chunks of one call in flight at once
REPLICA_COOLDOWN = 5.0  # seconds a replica that failed is skipped

RERANK_PATH = "/v1/rerank"
SCORE_PATH = "/v1/score"
MODELS_PATH = "/v1/models"


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    base_urls: tuple[str, ...]
    api_key: str | None = None
    modal_key: str | None = None
    modal_secret: str | None = None
    model: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    max_docs_per_request: int = DEFAULT_MAX_DOCS_PER_REQUEST
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    cooldown: float = REPLICA_COOLDOWN
    headers: Mapping[str, str] = field(default_factory=dict)

    def request_headers(self) -> dict[str, str]:
        headers = {"User-Agent": "rerank-kit", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.modal_key and self.modal_secret:
            # Modal's proxy auth for endpoints deployed with requires_proxy_auth / app.server.
            headers["Modal-Key"] = self.modal_key
            headers["Modal-Secret"] = self.modal_secret
        return headers


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def resolve_config(
    base_url: str | Sequence[str] | None = None,
    *,
    api_key: str | None = None,
    modal_key: str | None = None,
    modal_secret: str | None = None,
    model: str | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    max_docs_per_request: int | None = None,
    max_concurrency: int | None = None,
    cooldown: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Explicit arguments first; each RERANK_KIT_* variable is read only when its argument is None."""
    # RERANK_KIT_URL: server URL, or several separated by commas (replicas).
    urls = base_url if base_url is not None else _env("RERANK_KIT_URL")
    if urls is None:
        raise ConfigError("no server URL: pass base_url=... (or --url), or set RERANK_KIT_URL")
    url_list = [u.strip() for u in (urls.split(",") if isinstance(urls, str) else urls) if u and u.strip()]
    if not url_list:
        raise ConfigError("base_url is empty: pass at least one server URL")
    for url in url_list:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {url!r} must start with http:// or https://")
    if max_retries is not None and max_retries < 0:
        raise ConfigError("max_retries must be >= 0")
    if max_docs_per_request is not None and max_docs_per_request < 1:
        raise ConfigError("max_docs_per_request must be >= 1")
    if timeout is not None and timeout <= 0:
        raise ConfigError("timeout must be > 0 seconds")
    env_timeout = _env("RERANK_KIT_TIMEOUT")  # RERANK_KIT_TIMEOUT: seconds per request
    return ClientConfig(
        base_urls=tuple(u.rstrip("/").removesuffix("/v1") for u in url_list),
        # RERANK_KIT_API_KEY: bearer key for servers started with an API key.
        api_key=api_key if api_key is not None else _env("RERANK_KIT_API_KEY"),
        # RERANK_KIT_MODAL_KEY / RERANK_KIT_MODAL_SECRET: Modal proxy-auth token (Modal-Key/Modal-Secret).
        modal_key=modal_key if modal_key is not None else _env("RERANK_KIT_MODAL_KEY"),
        modal_secret=modal_secret if modal_secret is not None else _env("RERANK_KIT_MODAL_SECRET"),
        # RERANK_KIT_MODEL: model name to send; without it the client asks /v1/models once.
        model=model if model is not None else _env("RERANK_KIT_MODEL"),
        timeout=timeout if timeout is not None else float(env_timeout) if env_timeout else DEFAULT_TIMEOUT,
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        max_docs_per_request=max_docs_per_request or DEFAULT_MAX_DOCS_PER_REQUEST,
        max_concurrency=max_concurrency or DEFAULT_MAX_CONCURRENCY,
        cooldown=REPLICA_COOLDOWN if cooldown is None else cooldown,
        headers=dict(headers or {}),
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


def document_text(document: Any, text_key: str = "text") -> str:
    """The text of a document given as a string, a mapping with ``text_key``, or an object with
    ``.text`` / ``.page_content`` (LangChain) / ``.get_content()`` (LlamaIndex)."""
    if isinstance(document, str):
        return document
    if isinstance(document, Mapping):
        value = document.get(text_key)
        if isinstance(value, str):
            return value
        raise TypeError(f"a mapping without a {text_key!r} string")
    for attr in ("text", "page_content"):
        value = getattr(document, attr, None)
        if isinstance(value, str):
            return value
    get_content = getattr(document, "get_content", None)
    if callable(get_content):
        value = get_content()
        if isinstance(value, str):
            return value
    raise TypeError(type(document).__name__)


def _texts(documents: Sequence[Any], text_key: str) -> list[str]:
    if all(type(doc) is str for doc in documents):  # the common case, without a call per document
        return list(documents)
    texts = []
    for i, doc in enumerate(documents):
        try:
            texts.append(document_text(doc, text_key))
        except TypeError as exc:
            raise InvalidInputError(
                f"document {i} is {exc}: pass a string, a dict with a {text_key!r} string, "
                "or an object with a .text or .page_content string"
            ) from None
    return texts


# --- rerank: prepare, chunk, merge ----------------------------------------------------------------------


@dataclass(frozen=True)
class RerankPlan:
    """One rerank call turned into requests: unique texts, who owns each, and the chunks to send."""

    query: str
    documents: Sequence[Any]
    unique_texts: list[str]
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
    *,
    top_n: int | None,
    instruction: str | None,
    max_tokens_per_doc: int | None,
    return_documents: bool,
    max_docs_per_request: int,
    text_key: str = "text",
) -> RerankPlan:
    """Validate a rerank call and split it into requests. Identical documents are scored once."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, not {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query is empty: pass the question to rank the documents against")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError("documents must be a list (of strings, dicts with 'text', or objects with .text)")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise InvalidInputError(f"top_n must be an integer >= 1 (or None for all results), not {top_n!r}")
    if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
        raise InvalidInputError("max_tokens_per_doc must be >= 1 (or None for the server's default)")
    if instruction is not None and not instruction.strip():
        raise InvalidInputError("instruction is empty: pass None or a task description")
    texts = _texts(documents, text_key)
    unique: list[str] = texts
    owners: list[list[int]] | None = None
    if len(set(texts)) < len(texts):
        first_seen: dict[str, int] = {}
        unique, owners = [], []
        for i, text in enumerate(texts):
            slot = first_seen.get(text)
            if slot is None:
                first_seen[text] = slot = len(unique)
                unique.append(text)
                owners.append([])
            owners[slot].append(i)
    n_chunks = max(1, math.ceil(len(unique) / max_docs_per_request))
    size = math.ceil(len(unique) / n_chunks) if unique else 0  # balanced chunks
    chunks = [list(range(start, min(start + size, len(unique)))) for start in range(0, len(unique), size or 1)]
    extra: dict[str, Any] = {}
    if instruction is not None:
        extra["instruction"] = instruction
    if max_tokens_per_doc is not None:
        extra["max_tokens_per_doc"] = max_tokens_per_doc
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
    for chunk, body in zip(plan.chunks, bodies, strict=True):
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
    )


def empty_rerank(model: str) -> RerankResponse:
    return RerankResponse(model=model, results=[], requests=0)


# --- score -------------------------------------------------------------------------------------------


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


def check_instruction(model: str, instruction: str | None) -> None:
    """Refuse an instruction for a known model whose template has no place for one."""
    if instruction is None:
        return
    from rerank_kit.recipes import RECIPES

    recipe = RECIPES.get(model)
    if recipe is not None and not recipe.supports_instruction:
        raise InvalidInputError(
            f"{model} ({recipe.family}) takes no instruction: remove it. "
            "Models that take one: Qwen3-Reranker, mxbai-rerank v2, bge-reranker-v2-gemma"
        )


# --- errors and retries -----------------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(status: int, body_text: str, headers: Mapping[str, str], url: str) -> APIStatusError:
    """The typed error for a non-2xx answer, carrying vLLM's message, type and param."""
    try:
        body: Any = json.loads(body_text) if body_text else None
    except ValueError:
        body = body_text
    return status_error(status, body, url=url, retry_after=retry_after_seconds(headers.get("retry-after")))


def is_replica_failure(error: APIError) -> bool:
    """Errors that say "this server cannot serve right now": skip it for a while, try another."""
    return isinstance(error, (APIConnectionError, InternalServerError, RateLimitError, RequestTimeoutError))


def retry_delay(error: APIError, attempt: int, max_retries: int, *, failover: bool, rng: random.Random) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None when the error is final.

    Connection errors, 408, 429 and 5xx are retried; everything else (400, 401, 404, 413, 422) is
    not. ``Retry-After`` is honoured (capped); otherwise exponential backoff with jitter. When another
    replica can take the request (``failover``), it is sent there at once.
    """
    if not error.retryable or attempt >= max_retries:
        return None
    if failover:
        return 0.0
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    backoff = min(MAX_BACKOFF, INITIAL_BACKOFF * (2**attempt))
    return backoff / 2 + rng.uniform(0, backoff / 2)  # "equal jitter": spread out, never near zero


def log_retry(method: str, url: str, error: APIError, delay: float, attempt: int, max_retries: int) -> None:
    logger.warning(
        "rerank-kit: retrying %s %s in %.2f s (retry %d of %d): %s", method, url, delay, attempt + 1, max_retries, error
    )


# --- replicas -----------------------------------------------------------------------------------------


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    served: int = 0


class Replicas:
    """Least-outstanding-requests choice among replicas, skipping failed ones for a cool-down.

    Thread-safe; the async client uses it from one event loop.
    """

    def __init__(self, urls: Sequence[str], cooldown: float, rng: random.Random | None = None) -> None:
        self.replicas = [Replica(u) for u in urls]
        self.cooldown = cooldown
        self.retries = 0  # retries decided so far (failovers included)
        self._lock = threading.Lock()
        self._rng = rng or random.Random()

    def acquire(self, now: float | None = None, avoid: Replica | None = None) -> Replica:
        now = time.monotonic() if now is None else now
        with self._lock:
            healthy = [r for r in self.replicas if r.down_until <= now and r is not avoid]
            if not healthy:
                healthy = [r for r in self.replicas if r.down_until <= now] or [
                    min(self.replicas, key=lambda r: r.down_until)
                ]
            least = min(r.outstanding for r in healthy)
            choice = self._rng.choice([r for r in healthy if r.outstanding == least])
            choice.outstanding += 1
            return choice

    def release(self, replica: Replica, *, ok: bool | None, now: float | None = None) -> None:
        """``ok``: True on success, False when the replica failed, None when the request's fault."""
        now = time.monotonic() if now is None else now
        with self._lock:
            replica.outstanding -= 1
            if ok is True:
                replica.failures = 0
                replica.down_until = 0.0
                replica.served += 1
            elif ok is False:
                replica.failures += 1
                replica.down_until = now + self.cooldown

    def has_alternative(self, replica: Replica, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return any(r is not replica and r.down_until <= now for r in self.replicas)

    def counts(self) -> dict[str, int]:
        """Successful requests per replica URL."""
        with self._lock:
            return {r.url: r.served for r in self.replicas}


class RetryLoop:
    """The state of one request across its attempts: which replica next, and what to do on failure.

    Both clients drive it the same way::

        loop = RetryLoop(replicas, max_retries, rng, method, path)
        while True:
            replica = loop.acquire()
            ... send ...; on success: loop.succeeded(replica); return
            delay = loop.failed(replica, error)   # raises the error when it is final
            sleep(delay)
    """

    def __init__(self, replicas: Replicas, max_retries: int, rng: random.Random, method: str, path: str) -> None:
        self.replicas = replicas
        self.max_retries = max_retries
        self.rng = rng
        self.method = method
        self.path = path
        self.attempt = 0
        self._avoid: Replica | None = None

    def acquire(self) -> Replica:
        return self.replicas.acquire(avoid=self._avoid)

    def succeeded(self, replica: Replica) -> None:
        self.replicas.release(replica, ok=True)

    def abandon(self, replica: Replica) -> None:
        """The request was cancelled (Ctrl-C, task cancellation): free the slot, blame no one."""
        self.replicas.release(replica, ok=None)

    def failed(self, replica: Replica, error: APIError) -> float:
        """Record the failure; return the delay before the next attempt, or raise ``error``."""
        replica_failed = is_replica_failure(error)
        self.replicas.release(replica, ok=False if replica_failed else None)
        failover = replica_failed and self.replicas.has_alternative(replica)
        delay = retry_delay(error, self.attempt, self.max_retries, failover=failover, rng=self.rng)
        if delay is None:
            raise error
        log_retry(self.method, replica.url + self.path, error, delay, self.attempt, self.max_retries)
        with self.replicas._lock:
            self.replicas.retries += 1
        self._avoid = replica if failover else None
        self.attempt += 1
        return delay
