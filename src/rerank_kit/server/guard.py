"""An ASGI middleware that vLLM loads (``--middleware rerank_kit.guard.RerankKitGuard``, a shim of this
module): an API key on every route but /health, input limits on every request body, and a bound on requests
in flight.

Why: vLLM's ``--api-key`` only guards paths under /v1, /v2, /inference and /cohere, so /rerank,
/score, /metrics, /tokenize and /docs stay open; a single request with 50,000 documents or a
2 MB document keeps a CPU server busy for minutes, on whichever route carries it (/v1/rerank,
/invocations, /pooling, /v1/embeddings, ...); and vLLM queues without bound, so a burst grows
everyone's latency. rerank-kit's launcher always loads this guard.

What it does, in order, for each HTTP request:

1. Authentication: every route but /health needs ``Authorization: Bearer <key>`` when a key is set (401).
2. Admission: at most ``max_in_flight`` requests per API server process run at once; past it, 429 with a
   ``Retry-After`` (see ``retry_after``). /health, /metrics, /ping, /load, /version, /v1/models and the
   docs are never counted nor shed. vLLM's API server is one process, or one per ``--api-server-count``
   (which vLLM defaults to ``--data-parallel-size``): each process has its own guard and its own bound.
3. Body limits, by body rather than by route: every POST/PUT/PATCH/DELETE body is bounded by
   ``max_body_bytes`` (413). A JSON body (Content-Type ``application/json`` or ``application/*+json``,
   or any body starting with ``{`` or ``[``: what FastAPI and Starlette would parse) must parse (400),
   be an object nested at most ``bodycheck.MAX_DEPTH`` levels (400), and its text fields (``bodycheck.TEXT_FIELDS``,
   at any depth) must hold at most ``max_documents`` items per list and ``max_document_chars``
   characters per string (413). Forms and other bodies are bounded by size only. The app then
   receives the exact bytes the client sent.
4. Long documents, on the rerank and score routes: a document longer than fits beside the query is sent
   as windows and its answer merged back to one result per document (``server.chunking``; the response
   says so in ``x-rerank-kit-chunks``). Bodies whose documents all fit go to the app as they came.

Configuration comes from the server's environment, set by the launcher (never from argv, which
``ps`` shows to every user). ``Limits.to_env()`` writes it and ``Limits.from_env()`` reads it; the names
are spelled only in ``rerank_kit._contract``:

- ``VLLM_API_KEY``: the bearer key (what vLLM itself reads); unset = no authentication.
- ``RERANK_KIT_MAX_DOCUMENTS``: items per text list (documents, pairs, inputs, messages), default 1000.
- ``RERANK_KIT_MAX_DOCUMENT_CHARS``: characters per text (query, document, prompt, ...), default 200,000.
- ``RERANK_KIT_MAX_BODY_BYTES``: request body size, default 32 MiB.
- ``RERANK_KIT_MAX_IN_FLIGHT``: requests in flight per API server process; unset or 0 = unbounded
  (the launcher sets it from the machine: ``machine.max_in_flight_choice``).
- ``RERANK_KIT_MAX_CHUNKS_PER_DOC``: windows per long document when a request does not say, default 8 (1: truncate).
- ``RERANK_KIT_STRICT_LENGTH``: ``1`` makes rerank-kit's vLLM plugin reject over-long pairs (vLLM's 400)
  instead of truncating them.

Errors use vLLM's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from rerank_kit._contract import (
    CHUNKS_HEADER,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DOCUMENT_CHARS,
    DEFAULT_MAX_DOCUMENTS,
    HEALTH_PATH,
    MODELS_PATH,
    RERANK_PATHS,
    SCORE_PATHS,
    VERSION_PATH,
    VLLM_API_KEY_ENV,
    Limits,
)
from rerank_kit.server import chunking, parsed_body
from rerank_kit.server.bodycheck import RejectedRequest, check_body, too_large
from rerank_kit.server.normalize import normalize_rerank_body

__all__ = [  # what vLLM, the launcher and the tests use; Limits and the defaults are rerank_kit._contract's
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DOCUMENTS",
    "DEFAULT_MAX_DOCUMENT_CHARS",
    "Limits",
    "RejectedRequest",
    "RerankKitGuard",
    "check_body",
    "retry_after",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({HEALTH_PATH})
# Probes, metrics and docs: cheap, and a load balancer must still see them when the server is saturated.
UNCOUNTED_PATHS = frozenset(
    {HEALTH_PATH, "/ping", "/load", "/metrics", VERSION_PATH, MODELS_PATH, "/docs", "/redoc", "/openapi.json"}
)
UNCOUNTED_PREFIXES = ("/metrics/", "/docs/")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Admission: weight of the newest request duration in the running mean; the mean before any request ends.
DURATION_WEIGHT = 0.2
INITIAL_DURATION_S = 1.0
MAX_RETRY_AFTER_S = 60


def retry_after(mean_duration: float, excess: float, bound: int) -> int:
    """Seconds a shed client should wait: ``ceil(mean_duration * excess / bound)``, from 1 to 60.

    At the bound, ``bound`` requests are in flight and each takes ``mean_duration`` seconds, so a slot
    frees every ``mean_duration / bound`` seconds (Little's law); ``excess`` counts the requests recently
    shed (this one included), which will come back for those slots. The n-th of a burst is told to
    come back when about n slots have freed, which spreads the retries instead of bunching them.

        >>> retry_after(2.0, 10, 4), retry_after(0.05, 1, 8), retry_after(30.0, 100, 2)
        (5, 1, 60)
    """
    # Rounded to the millisecond first, so a decayed 1.0000000001 is 1 s, not 2.
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(round(mean_duration * excess / bound, 3))))


class _Admission:
    """Requests in flight, the running mean of their durations, and the recently shed (for Retry-After).

    Everything runs on the server's one event loop, so plain counters need no lock.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.in_flight = 0
        self.mean_duration: float | None = None
        self.excess = 0.0  # shed requests, decaying with time constant mean_duration
        self.last_shed = 0.0

    def shed(self, now: float) -> int | None:
        """Retry-After seconds when the bound is reached (the caller answers 429), else None."""
        if self.in_flight < self.bound:
            return None
        mean = max(self.mean_duration or INITIAL_DURATION_S, 1e-3)
        self.excess = self.excess * math.exp(-(now - self.last_shed) / mean) + 1
        self.last_shed = now
        return retry_after(mean, self.excess, self.bound)

    def done(self, seconds: float) -> None:
        mean = self.mean_duration
        self.mean_duration = seconds if mean is None else mean + DURATION_WEIGHT * (seconds - mean)


# --- the middleware ----------------------------------------------------------------------------------


async def _send_error(send: Send, error: RejectedRequest, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(
        {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.status}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _normalized(scope: Scope, parsed: dict[str, Any]) -> dict[str, Any] | None:
    """The body vLLM accepts when a third-party client sent a shape it refuses (``rerank_kit.server.normalize``);
    None when ``parsed`` is fine as it is."""
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    if path not in RERANK_PATHS:
        return None
    normalized, changes = normalize_rerank_body(path, parsed, max_model_len=_max_model_len(scope))
    return normalized if changes else None


def _replace_body(scope: Scope, body: dict[str, Any]) -> bytes:
    """``body`` encoded; Content-Length follows it."""
    encoded = orjson.dumps(body)
    scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"] + [
        (b"content-length", str(len(encoded)).encode())
    ]
    return encoded


def _io_processor(scope: Scope) -> Any:
    """The served model's scoring IO processor (vLLM 0.32: app.state.serving_scores.io_processor), or None."""
    try:
        return scope["app"].state.serving_scores.io_processor
    except (KeyError, AttributeError):
        return None


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that adds ``headers`` to the response's start."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return wrapped


def _rewriting(send: Send, rewrite: Callable[[Any], Any], headers: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that buffers a 200 JSON response, passes it through ``rewrite`` and sends the result with
    ``headers`` added; any other response goes out as the app sent it (with ``headers``)."""
    start: Message | None = None
    parts: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            if message.get("status") != 200:
                await send({**message, "headers": [*message.get("headers", []), *headers]})
            return
        if message["type"] != "http.response.body" or start is None or start.get("status") != 200:
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        payload = orjson.dumps(rewrite(orjson.loads(b"".join(parts))))
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*kept, (b"content-length", str(len(payload)).encode()), *headers]})
        await send({"type": "http.response.body", "body": payload})

    return wrapped


def _max_model_len(scope: Scope) -> int | None:
    """The served model's max_model_len, from the vLLM app's state (vLLM 0.32: app.state.vllm_config)."""
    try:
        value = scope["app"].state.vllm_config.model_config.max_model_len
    except (KeyError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def _counted(path: str, method: str) -> bool:
    return method != "OPTIONS" and path not in UNCOUNTED_PATHS and not path.startswith(UNCOUNTED_PREFIXES)


class RerankKitGuard:
    """Authenticate every route but /health; bound requests in flight; bound what every request body carries.

    vLLM adds it with ``--middleware rerank_kit.guard.RerankKitGuard`` and reads its settings from the
    environment (``Limits``). Any ASGI app can be wrapped the same way::

        app = RerankKitGuard(app)  # with VLLM_API_KEY and RERANK_KIT_* set in os.environ
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get(VLLM_API_KEY_ENV, "")
        self._key_hash = hashlib.sha256(key.encode()).digest() if key else None
        self.limits = Limits.from_env()
        self.admission = _Admission(self.limits.max_in_flight) if self.limits.max_in_flight else None
        self._chunker_made: tuple[chunking.Chunker | None] | None = None

    def _authorized(self, scope: Scope) -> bool:
        if self._key_hash is None:
            return True
        value = _header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, token = value.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            hashlib.sha256(token.encode()).digest(), self._key_hash
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        method = scope.get("method", "GET")
        if path not in OPEN_PATHS and method != "OPTIONS" and not self._authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _send_error(
                send,
                RejectedRequest(
                    401, "a valid API key is required: send 'Authorization: Bearer <key>'", "AuthenticationError"
                ),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        admission = self.admission if _counted(path, method) else None
        if admission is None:
            await self._handle(scope, receive, send, method)
            return
        started = time.monotonic()
        wait = admission.shed(started)
        if wait is not None:
            await _send_error(
                send,
                RejectedRequest(
                    429,
                    f"this server is at its bound of {admission.bound} requests in flight: retry after {wait} s",
                    "RateLimitError",
                ),
                [(b"retry-after", str(wait).encode())],
            )
            return
        # Admitted before the body is read: the bound also caps the memory held by buffered bodies.
        admission.in_flight += 1
        served = False
        try:
            served = await self._handle(scope, receive, send, method)
        finally:
            # Runs on a response, an exception in the app, a client that went away and a cancelled task.
            admission.in_flight -= 1
            if served:
                admission.done(time.monotonic() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, method: str) -> bool:
        """Check the body when there is one, then call the app; True when the app was called."""
        if method not in BODY_METHODS:
            await self.app(scope, receive, send)
            return True
        body = await self._read_body(scope, receive, send)
        if body is None:
            return False
        content_type = _header(scope, b"content-type")
        try:
            parsed = check_body(body, self.limits, content_type.decode("latin-1") if content_type is not None else None)
            if parsed is not None:
                if (normalized := _normalized(scope, parsed)) is not None:
                    parsed, body = normalized, _replace_body(scope, normalized)
                chunked = await self._chunked(scope, parsed)
                if chunked is not None:
                    expanded, send = chunked(send)
                    if expanded is not None:
                        parsed, body = expanded, _replace_body(scope, expanded)
                scope[parsed_body.PARSED_KEY] = parsed  # what `body` encodes: vLLM's routes need not parse it again
        except RejectedRequest as error:
            await _send_error(send, error)
            return False
        except Exception as exc:  # a checker bug must be a 400, never a 500 or a dropped connection
            await _send_error(
                send,
                RejectedRequest(
                    400, f"the request body could not be checked ({type(exc).__name__})", "BadRequestError"
                ),
            )
            return False
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
        return True

    async def _chunked(
        self, scope: Scope, body: dict[str, Any]
    ) -> Callable[[Send], tuple[dict[str, Any] | None, Send]] | None:
        """For a scoring request on a server that cuts long documents (``server.chunking``): a function of
        ``send`` giving the body vLLM scores (None: unchanged) and the ``send`` that merges the windows' scores
        and says so (``CHUNKS_HEADER``). None for any other request."""
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path not in RERANK_PATHS and path not in SCORE_PATHS:
            return None
        fields = chunking.documents_field(path, body)
        if fields is None or (chunker := self._chunker(scope)) is None:
            return None
        queries_field, documents_field = fields
        requested = chunking.max_chunks(body, self.limits.max_chunks_per_doc)
        documents = body[documents_field] if isinstance(body[documents_field], list) else [body[documents_field]]
        queries = body["query"] if queries_field is None else body[queries_field]
        if not isinstance(queries, list):
            queries = [queries] * len(documents)
        elif len(queries) == 1:
            queries = queries * len(documents)
        if len(queries) != len(documents):
            return None  # vLLM's own 400 for mismatched lists
        cap = body.get("max_tokens_per_doc")
        kwargs = chunking.chat_template_kwargs(body)
        try:
            if (requested <= 1 and not self.limits.strict_length) or chunker.fits_as_sent(queries, documents, kwargs):
                cuts: list[list[tuple[int, int]] | None] = [None] * len(documents)  # nothing to tokenize here
            else:
                cuts = await asyncio.get_running_loop().run_in_executor(
                    chunker.executor,
                    functools.partial(
                        chunker.cuts, queries, documents, kwargs, max_chunks=requested,
                        strict=self.limits.strict_length, max_tokens_per_doc=cap if type(cap) is int else 0,
                    ),
                )  # fmt: skip
        except RejectedRequest:
            raise
        except Exception:  # a query or template vLLM refuses: vLLM answers with its own error
            return None
        if not any(cuts):  # nothing to cut: the body as it came
            said = [(CHUNKS_HEADER.encode(), f"pairs={len(documents)}; max={requested}".encode())]
            return lambda send: (None, _with_headers(send, said))
        expanded, plan = chunking.expand(
            body, queries_field, documents_field, cuts, limit=self.limits.max_documents, requested=requested
        )
        header = [(CHUNKS_HEADER.encode(), f"pairs={plan.pairs}; max={requested}".encode())]
        if queries_field is None:
            top_n = body.get("top_n") if type(body.get("top_n")) is int else None
            merge = functools.partial(chunking.collapse_rerank, plan=plan, documents=documents, top_n=top_n)
        else:
            merge = functools.partial(chunking.collapse_score, plan=plan)
        return lambda send: (expanded, _rewriting(send, merge, header))

    def _chunker(self, scope: Scope) -> chunking.Chunker | None:
        """The served model's chunker, made once per process (None: this server cannot cut documents)."""
        if self._chunker_made is None:
            io_processor = _io_processor(scope)
            if io_processor is None:
                return None
            self._chunker_made = (chunking.Chunker.of(io_processor, self.limits.chunk_overlap_percent),)
        return self._chunker_made[0]

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (past the size limit) or when the client left."""
        limit = self.limits.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, too_large(int(declared), limit))
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, too_large(size, limit))
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)
