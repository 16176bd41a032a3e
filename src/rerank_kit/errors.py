"""One exception hierarchy for everything rerank-kit raises.

    RerankKitError
    ├── ConfigError                 bad input to rerank-kit itself (fix the call, then retry)
    │   ├── UnknownModelError       no recipe for a model id
    │   └── InvalidInputError       client-side validation (empty query, top_n < 1, ...); also a ValueError
    ├── ServeError                  the launcher could not start or find a server
    │   ├── PortInUseError
    │   └── ServerStartError        the server died or never became healthy (carries its log tail)
    └── APIError                    talking to a rerank endpoint
        ├── APIConnectionError      refused, reset, DNS...           (retried)
        │   ├── APITimeoutError     no answer in time, or the call's deadline passed (retried until it)
        │   └── ConnectionClosedError   the connection closed before the answer (sent once more even
        │                               with retries off, then retried)
        └── APIStatusError          the server answered non-2xx; .status_code, .message, .type, .param
            ├── BadRequestError 400, AuthenticationError 401, NotFoundError 404,
            │   └── ModelNotServedError     no server the client was given serves the model asked for
            ├── RequestTooLargeError 413, UnprocessableEntityError 422,
            ├── RateLimitError 429                                   (retried)
            └── InternalServerError 5xx                              (retried)

Status codes are mapped to classes in exactly one place: :func:`status_error`.

One warning: ``DocumentsTruncatedWarning``, when a call asked for long documents to be scored in windows
(``max_chunks_per_doc``) and the server truncated them instead.

    >>> err = status_error(429, {"error": {"message": "slow down", "type": "rate_limit"}})
    >>> type(err).__name__, err.retryable
    ('RateLimitError', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RerankKitError(Exception):
    """Base class of every error rerank-kit raises."""


class ConfigError(RerankKitError):
    """rerank-kit was asked for something it cannot do; the message says what to change."""


class UnknownModelError(ConfigError):
    """No recipe matches a model id (and no --family was given)."""


class InvalidInputError(ConfigError, ValueError):
    """Input rejected before any request was sent."""


class InstructionNotSupportedError(InvalidInputError):
    """An instruction for a model whose score template has no place for one."""


class ServeError(RerankKitError):
    """The launcher could not start, find or stop a server."""


class PortInUseError(ServeError):
    """Something already listens on the requested host:port."""


class SelfCheckError(ServeError):
    """A healthy server builds a different prompt than the model's reference: its scores would be wrong."""


class ServerStartError(ServeError):
    """The server exited or did not become healthy in time.

    ``log_tail`` holds the last lines of its log and ``hint`` the likely fix, when one is known.
    """

    def __init__(self, message: str, *, log_tail: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        if self.hint:
            text += f"\nLikely fix: {self.hint}"
        if self.log_tail:
            text += f"\n--- last lines of the server log ---\n{self.log_tail}"
        return text


class DocumentsTruncatedWarning(UserWarning):
    """The server does not score long documents in windows: what did not fit its window was not read."""


class APIError(RerankKitError):
    """A request to a rerank endpoint failed."""

    retryable: bool = False


class APIConnectionError(APIError):
    """The request never got an HTTP answer (refused, reset, DNS, ...)."""

    retryable = True


class ConnectionClosedError(APIConnectionError):
    """The connection closed before the answer came: most often a kept-alive connection that the server
    closed as the request went out on it (a gateway reloading its configuration closes its idle
    connections; so does a server whose keep-alive time ran out), else a server that died.

    The request never got an answer, and a rerank or score request gives the same answer when sent
    twice, so the clients send it once more at once on a new connection, not counted as a retry and
    also when retries are off, as Go's net/http and curl do for a reused connection (RFC 9110 9.2.2
    allows it for idempotent requests). A second one for the same request is retried like any connection error.
    """


class APITimeoutError(APIConnectionError):
    """No answer within the timeout, or the call's deadline passed.

    When the deadline ended the call, ``attempts`` maps each replica URL to the requests the call
    sent it and ``elapsed`` is how long the call ran, in seconds; otherwise they are {} and None.
    """

    def __init__(self, message: str, *, attempts: Mapping[str, int] | None = None, elapsed: float | None = None):
        super().__init__(message)
        self.attempts = dict(attempts or {})
        self.elapsed = elapsed


class APIStatusError(APIError):
    """The server answered with a non-2xx status.

    ``message``, ``type`` and ``param`` come from vLLM's error body when it has one.
    """

    status_code: int = 0

    def __init__(
        self,
        status_code: int,
        body: Any = None,
        *,
        message: str | None = None,
        type: str | None = None,  # noqa: A002 - the field is called "type" on the wire
        param: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.message = message or _reason(status_code)
        self.type = type
        self.param = param
        self.url = url
        self.retry_after = retry_after
        where = f" from {url}" if url else ""
        extra = f" (param: {param})" if param else ""
        super().__init__(f"HTTP {status_code}{where}: {self.message}{extra}")


class BadRequestError(APIStatusError):
    status_code = 400


class AuthenticationError(APIStatusError):
    status_code = 401


class NotFoundError(APIStatusError):
    status_code = 404


class ModelNotServedError(NotFoundError):
    """No server the client was given serves the model a call asked for.

    A client given several URLs routes each call to the servers of its ``model``; this is what it
    raises instead of the 404 one server answers for a model it does not serve, so ``except
    NotFoundError`` catches both. ``served`` maps each model the servers serve to their URLs;
    ``unreachable`` maps the URLs that could not be asked to why.

        >>> error = ModelNotServedError("m", {"a": ["http://h:1"]})
        >>> str(error).split("(")[1], isinstance(error, NotFoundError)
        ('served: a at http://h:1): pass a served model as model=', True)
    """

    def __init__(self, model: str, served: Mapping[str, list[str]], unreachable: Mapping[str, str] | None = None):
        self.model = model
        self.served = {name: list(urls) for name, urls in served.items()}
        self.unreachable = dict(unreachable or {})
        listed = "; ".join(f"{name} at {', '.join(urls)}" for name, urls in self.served.items()) or "none"
        message = f"model {model!r} is not served by any of the client's servers (served: {listed})"
        if self.unreachable:
            message += "; could not ask " + "; ".join(f"{url} ({why})" for url, why in self.unreachable.items())
        message += ": pass a served model as model="
        super().__init__(404, None, message=message)
        self.args = (message,)  # no server answered 404: the message alone, without "HTTP 404"


class RequestTooLargeError(APIStatusError):
    status_code = 413


class UnprocessableEntityError(APIStatusError):
    status_code = 422


class RateLimitError(APIStatusError):
    status_code = 429
    retryable = True


class InternalServerError(APIStatusError):
    """Any 5xx; vLLM answers 503 while the model is still loading."""

    retryable = True


class RequestTimeoutError(APIStatusError):
    """HTTP 408 from a proxy in front of the server."""

    status_code = 408
    retryable = True


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    408: RequestTimeoutError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def _reason(status_code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status_code).phrase
    except ValueError:
        return "error"


def _error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """message, type, param from the error bodies vLLM, FastAPI and proxies send."""
    if not isinstance(body, dict):
        return (body.strip()[:500] or None) if isinstance(body, str) else None, None, None
    err = body.get("error", body)
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail")
        if isinstance(message, list):  # FastAPI validation errors: a list of {loc, msg}
            message = "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
                if isinstance(item, dict)
                else str(item)
                for item in message
            )
        param = err.get("param")
        return (str(message) if message else None), err.get("type"), (str(param) if param else None)
    if isinstance(err, str):
        return err, None, None
    detail = body.get("detail")
    return (str(detail) if detail else None), None, None


def status_error(
    status_code: int,
    body: Any = None,
    *,
    url: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """The one place that maps an HTTP status to an exception class."""
    if status_code >= 500:
        cls: type[APIStatusError] = InternalServerError
    else:
        cls = _BY_STATUS.get(status_code, APIStatusError)
    message, type_, param = _error_fields(body)
    return cls(
        status_code,
        body,
        message=message,
        type=type_,
        param=param,
        url=url,
        retry_after=retry_after,
    )
