"""An ASGI middleware that vLLM loads (``--middleware rerank_kit.guard.RerankKitGuard``): an API key on
every route but /health, and input limits on the scoring routes.

Why: vLLM's ``--api-key`` only guards paths under /v1, /v2, /inference and /cohere, so /rerank,
/score, /metrics, /tokenize and /docs stay open; and a single request with 50,000 documents or a
2 MB document keeps a CPU server busy for minutes. rerank-kit's launcher always loads this guard.

Configuration comes from the server's environment, set by the launcher (never from argv, which
``ps`` shows to every user). ``Limits.to_env()`` writes it and ``Limits.from_env()`` reads it, so these
names are spelled only in this module:

- ``VLLM_API_KEY``: the bearer key (what vLLM itself reads); unset = no authentication.
- ``RERANK_KIT_MAX_DOCUMENTS``: documents (or pairs) per request, default 1000.
- ``RERANK_KIT_MAX_DOCUMENT_CHARS``: characters per query or document, default 200,000.
- ``RERANK_KIT_MAX_BODY_BYTES``: request body size, default 32 MiB.
- ``RERANK_KIT_STRICT_LENGTH``: ``1`` makes rerank-kit's vLLM plugin reject over-long pairs (vLLM's 400)
  instead of truncating them.

Errors use vLLM's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})
SCORING_PATHS = frozenset({"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score"})
DEFAULT_MAX_DOCUMENTS = 1000
DEFAULT_MAX_DOCUMENT_CHARS = 200_000
DEFAULT_MAX_BODY_MB = 32
DEFAULT_MAX_BODY_BYTES = DEFAULT_MAX_BODY_MB << 20
# vLLM's own name for the key (its /v1 routes check it too); the launcher sets it, the guard reads it.
API_KEY_ENV = "VLLM_API_KEY"
# Limits field -> the environment variable that carries it from the launcher to the server.
_ENV_NAMES = {
    "strict_length": "RERANK_KIT_STRICT_LENGTH",
    "max_documents": "RERANK_KIT_MAX_DOCUMENTS",
    "max_document_chars": "RERANK_KIT_MAX_DOCUMENT_CHARS",
    "max_body_bytes": "RERANK_KIT_MAX_BODY_BYTES",
}
# Request fields that carry the texts to score, by route family.
_TEXT_LIST_FIELDS = ("documents", "queries", "items", "text_1", "text_2", "data_1", "data_2")


@dataclass(frozen=True)
class Limits:
    """The server's input settings: the launcher writes them with ``to_env()``, the guard and the vLLM
    plugin read them with ``from_env()``.

        >>> Limits(max_documents=50, strict_length=True).to_env()
        {'RERANK_KIT_STRICT_LENGTH': '1', 'RERANK_KIT_MAX_DOCUMENTS': '50'}
        >>> Limits.from_env({"RERANK_KIT_MAX_DOCUMENTS": "50"}) == Limits(max_documents=50)
        True
    """

    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Reject query+document pairs longer than --max-model-len (vLLM's 400) instead of truncating them.
    strict_length: bool = False

    def to_env(self) -> dict[str, str]:
        """The environment variables that carry these settings; a default is left out (readers fall back to it)."""
        defaults = Limits()
        env = {}
        for name, variable in _ENV_NAMES.items():
            value = getattr(self, name)
            if value != getattr(defaults, name):
                env[variable] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The settings in ``environ`` (default ``os.environ``); unset or empty variables keep the defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for setting in dataclasses.fields(cls):
            raw = env.get(_ENV_NAMES[setting.name], "").strip()
            if raw:
                flag = isinstance(setting.default, bool)
                values[setting.name] = raw.lower() in ("1", "true", "yes") if flag else int(raw)
        return cls(**values)  # type: ignore[arg-type]


class RejectedRequest(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def _texts(value: Any) -> list[str]:
    """The strings a query/document field holds (plain strings or multimodal {"content": [...]} parts)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("content"), list):
            out.extend(part.get("text", "") for part in item["content"] if isinstance(part, dict))
    return out


def check_scoring_body(raw: bytes, limits: Limits) -> None:
    """Raise RejectedRequest when a /rerank or /score body is malformed or over a limit."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RejectedRequest(
            400, f"the request body is not valid UTF-8 (byte {exc.start})", "BadRequestError"
        ) from None
    except json.JSONDecodeError as exc:
        raise RejectedRequest(
            400, f"the request body is not valid JSON ({exc.msg} at line {exc.lineno})", "BadRequestError"
        ) from None
    if not isinstance(body, dict):
        raise RejectedRequest(400, "the request body must be a JSON object", "BadRequestError")
    for name in _TEXT_LIST_FIELDS:
        value = body.get(name)
        if isinstance(value, list) and len(value) > limits.max_documents:
            raise RejectedRequest(
                413,
                f"{len(value)} {name} in one request; this server accepts at most {limits.max_documents}: "
                "split the list (rerank-kit's client does it with max_docs_per_request)",
                "RequestTooLargeError",
                name,
            )
    for name in ("query", *_TEXT_LIST_FIELDS):
        if name not in body:
            continue
        for i, text in enumerate(_texts(body[name])):
            if len(text) > limits.max_document_chars:
                raise RejectedRequest(
                    413,
                    f"{name}[{i}] has {len(text):,} characters; this server accepts at most "
                    f"{limits.max_document_chars:,} per text: shorten or split it",
                    "RequestTooLargeError",
                    name,
                )


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


class RerankKitGuard:
    """Authenticate every route but /health; bound what /rerank and /score accept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get(API_KEY_ENV, "")
        self._key_hash = hashlib.sha256(key.encode()).digest() if key else None
        self.limits = Limits.from_env()

    def _authorized(self, scope: Scope) -> bool:
        if self._key_hash is None:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return secrets.compare_digest(hashlib.sha256(token.encode()).digest(), self._key_hash)
        return False

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
        if scope["type"] == "http" and method == "POST" and path in SCORING_PATHS:
            await self._checked(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body (refusing it past the size limit), check it, then hand it on unchanged."""
        limit = self.limits.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_error(send, _too_large(int(value), limit))
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, _too_large(size, limit))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            check_scoring_body(body, self.limits)
        except RejectedRequest as error:
            await _send_error(send, error)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(size: int, limit: int) -> RejectedRequest:
    return RejectedRequest(
        413,
        f"the request body has {size:,} bytes or more; this server accepts at most {limit:,}: "
        "send fewer or shorter documents",
        "RequestTooLargeError",
    )
