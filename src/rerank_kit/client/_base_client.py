"""What RerankClient and AsyncRerankClient share (``client.py`` holds only how each sends): configuration,
replicas and retry state (``BaseClient``), and one try of a request (``Attempt``).

This module is the one place where httpx errors become rerank-kit's (``translate_error``, ``Attempt``).
"""

from __future__ import annotations

import functools
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx

from rerank_kit.client import _core
from rerank_kit.client._config import (
    CHUNKS_HEADER,
    DEFAULT_CONNECT_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_KEEPALIVE_CONNECTIONS,
    resolve_config,
    seconds,
)
from rerank_kit.client._retry import Call, error_from_response, is_model_missing
from rerank_kit.client.replicas import Discovery, Replica, Replicas, RetryLoop, Route
from rerank_kit.errors import APIConnectionError, APIError, APITimeoutError, ConnectionClosedError, NotFoundError
from rerank_kit.recipes import lists_whole

_Transport = TypeVar("_Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)


def translate_error(exc: httpx.HTTPError, url: str) -> APIError:
    """The one boundary where httpx exceptions become rerank-kit's."""
    if closed_unanswered(exc):
        return ConnectionClosedError(f"{url} closed the connection before answering ({exc or type(exc).__name__})")
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from {url} in time ({type(exc).__name__})")
    return APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}")


def closed_unanswered(exc: httpx.HTTPError) -> bool:
    """The connection closed under the request before its answer came (see ConnectionClosedError).

    httpx says so as a write or read error, or "Server disconnected without sending a response";
    httpx-aiohttp (the bench's transport) calls aiohttp's ServerDisconnectedError and its failed
    request-body write ClientOSError a ConnectTimeout, so its cause is what tells."""
    if isinstance(exc, (httpx.WriteError, httpx.ReadError)):
        return True
    if isinstance(exc, httpx.RemoteProtocolError):
        return "without sending a response" in str(exc)
    aiohttp = sys.modules.get("aiohttp")  # only the aiohttp transport raises its errors, and it imports it
    cause = exc.__cause__
    return (
        aiohttp is not None
        and isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))
        and not isinstance(cause, aiohttp.ClientConnectorError)  # could not connect: nothing was sent
    )


def httpx_timeout(limit: float) -> httpx.Timeout:
    return httpx.Timeout(limit, connect=min(limit, DEFAULT_CONNECT_TIMEOUT))


def model_names(response: httpx.Response, url: str) -> list[str] | APIError:
    """What a /v1/models answer says: the model names, or the error it is."""
    if not response.is_success:
        return error_from_response(response.status_code, response.text, response.headers, url)
    try:
        return _core.parse_models(_core.decode_json(response.content, url))
    except APIError as error:
        return error


class Attempt:
    """One try of a request: ``with Attempt(loop, path) as attempt: attempt.response = send(attempt.url)``.

    Creating it picks the replica and the httpx ``timeout`` (the request timeout cut to the time the
    call has left), or raises the deadline's APITimeoutError when none is left. Leaving the block
    turns what happened into the retry loop's decision: after a 2xx answer ``delay`` stays None;
    after a failed one, or an httpx error (which the block swallows), ``delay`` is the wait before
    the next try, or the final error is raised. Anything else (Ctrl-C, a cancelled task) frees the
    replica and goes on up.
    """

    __slots__ = ("_loop", "delay", "replica", "response", "timeout", "url")

    def __init__(self, loop: RetryLoop, path: str) -> None:
        self._loop = loop
        self.replica = loop.acquire()
        self.url = self.replica.url + path
        self.timeout = httpx_timeout(loop.attempt_timeout())
        self.response: httpx.Response | None = None
        self.delay: float | None = None

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, httpx.HTTPError):
            self.delay = self._loop.failed(self.replica, translate_error(exc, self.replica.url))
            return True
        if exc is not None or self.response is None:
            self._loop.abandon(self.replica)
            return False
        if self.response.is_success:
            self._loop.succeeded(self.replica)
        else:
            error = error_from_response(self.response.status_code, self.response.text, self.response.headers, self.url)
            self.delay = self._loop.failed(self.replica, error)
        return False

    def answer(self) -> Any:
        """The 2xx answer's JSON; a rerank-kit server's CHUNKS_HEADER goes in as ``_core.CHUNKS_KEY``."""
        assert self.response is not None
        body = _core.decode_json(self.response.content, self.url)
        windows = _core.chunks_header(self.response.headers.get(CHUNKS_HEADER))
        if windows is not None and isinstance(body, dict):
            body[_core.CHUNKS_KEY] = windows
        return body


class BaseClient(Generic[_Transport]):
    """Configuration, replicas and retry state, shared by both clients; each opens its own httpx client."""

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        modal_key: str | None = None,
        modal_secret: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
        max_docs_per_request: int | None = None,
        max_concurrency: int | None = None,
        cooldown: float | None = None,
        headers: Mapping[str, str] | None = None,
        transport: _Transport | None = None,
        whole_lists: bool | None = None,
    ) -> None:
        self._config = resolve_config(
            base_url,
            api_key=api_key,
            modal_key=modal_key,
            modal_secret=modal_secret,
            model=model,
            timeout=timeout,
            deadline=deadline,
            max_retries=max_retries,
            max_docs_per_request=max_docs_per_request,
            max_concurrency=max_concurrency,
            cooldown=cooldown,
            headers=headers,
            whole_lists=whole_lists,
        )
        self._replicas = Replicas(self._config.base_urls, self._config.cooldown)
        self._rng = random.Random()
        self._model: str | None = self._config.model
        # Several URLs may serve several models: each call goes to the servers of its model (see replicas).
        # One URL is not routed: it gets every call, and its own 404 says when it does not serve a model.
        self._routed = len(self._config.base_urls) > 1
        # plan_rerank with this client's chunk size; a call passes rerank()'s options in order
        self._plan = functools.partial(_core.plan_rerank, max_docs_per_request=self._config.max_docs_per_request)
        self._open(transport)

    def _whole(self, model: str) -> bool:
        """Whether a rerank for ``model`` goes as one request, duplicates included (a listwise model)."""
        return self._config.whole_lists if self._config.whole_lists is not None else lists_whole(model)

    def _open(self, transport: _Transport | None) -> None:
        raise NotImplementedError

    def _http_options(self) -> dict[str, Any]:
        return {
            "headers": self._config.request_headers(),
            "timeout": httpx_timeout(self._config.timeout),
            "limits": httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
            ),
        }

    @property
    def base_urls(self) -> tuple[str, ...]:
        return self._config.base_urls

    def _call(
        self, timeout: float | None = None, max_retries: int | None = None, deadline: float | None = None
    ) -> Call:
        """A call's budget, its deadline starting now: the per-call options, else the client's."""
        return Call(
            seconds("timeout", timeout, default=self._config.timeout),
            self._config.max_retries if max_retries is None else max_retries,
            seconds("deadline", deadline, default=self._config.deadline),
        )

    def _start(
        self, method: str, path: str, json: Any, call: Call | None, among: tuple[Replica, ...] | None
    ) -> tuple[RetryLoop, bytes | None, dict[str, str] | None]:
        """A request's retry loop, and its body and headers: encoded once, whatever the retries.

        The request spends ``call``'s budget with the call's other requests; alone, it is a call of its own.
        It goes to one of ``among`` (the replicas of its model), or to any replica.
        """
        loop = RetryLoop(self._replicas, self._rng, method, path, call or self._call(), among)
        return loop, *_core.request_body(json)

    def _discovery(self, model: str | None, call: Call) -> Discovery:
        return Discovery(self._replicas, model or self._model, call, self._rng)

    def _stale(self, error: NotFoundError, route: Route) -> bool:
        """A routed request answered "model does not exist": the server was switched to another model
        since it was asked; the call asks it again and resends to the model's other servers."""
        return route.replicas is not None and is_model_missing(error)

    def replica_counts(self) -> dict[str, int]:
        """Successful requests per replica URL since the client was created."""
        return self._replicas.counts()

    def retry_count(self) -> int:
        """Requests retried (or failed over) since the client was created."""
        return self._replicas.retries

    def replay_count(self) -> int:
        """Requests sent once more because their connection closed before the answer (not retries: see
        :class:`~rerank_kit.errors.ConnectionClosedError`) since the client was created."""
        return self._replicas.replays
