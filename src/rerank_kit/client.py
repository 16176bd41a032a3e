"""RerankClient and AsyncRerankClient: typed, retried, load-balanced calls to vLLM's /v1/rerank and /v1/score.

The two classes are thin twins: they build requests and parse answers with `rerank_kit._core`,
decide retries and replicas with `rerank_kit._retry`, take their defaults from `rerank_kit._config`,
and differ only in how they send. This module is the one place where httpx errors become rerank-kit's.

    from rerank_kit import RerankClient

    with RerankClient("http://127.0.0.1:8000") as client:
        response = client.rerank("What is vLLM?", ["vLLM is an inference engine.", "Paris is in France."], top_n=1)
        print(response.results[0].index, response.results[0].relevance_score)
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import httpx

from rerank_kit import _core
from rerank_kit._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEALTH_TIMEOUT,
    HEALTH_PATH,
    MAX_CONNECTIONS,
    MAX_KEEPALIVE_CONNECTIONS,
    MODELS_PATH,
    RERANK_PATH,
    SCORE_PATH,
    VERSION_PATH,
    resolve_config,
    seconds,
)
from rerank_kit._lanes import LaneTransport
from rerank_kit._retry import Call, Replica, Replicas, RetryLoop, error_from_response, is_model_missing
from rerank_kit._routing import Discovery, Route
from rerank_kit.errors import APIConnectionError, APIError, APITimeoutError, ModelNotServedError, NotFoundError
from rerank_kit.recipes import check_instruction
from rerank_kit.types import HealthStatus, RerankResponse, ScoreResponse

_Transport = TypeVar("_Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)


def _translate(exc: httpx.HTTPError, url: str) -> APIError:
    """The one boundary where httpx exceptions become rerank-kit's."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from {url} in time ({type(exc).__name__})")
    return APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}")


def _timeout(limit: float) -> httpx.Timeout:
    return httpx.Timeout(limit, connect=min(limit, DEFAULT_CONNECT_TIMEOUT))


def _model_names(response: httpx.Response, url: str) -> list[str] | APIError:
    """What a /v1/models answer says: the model names, or the error it is."""
    if not response.is_success:
        return error_from_response(response.status_code, response.text, response.headers, url)
    try:
        return _core.parse_models(_core.decode_json(response.content, url))
    except APIError as error:
        return error


class _Attempt:
    """One try of a request: ``with _Attempt(loop, path) as attempt: attempt.response = send(attempt.url)``.

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
        self.timeout = _timeout(loop.attempt_timeout())
        self.response: httpx.Response | None = None
        self.delay: float | None = None

    def __enter__(self) -> _Attempt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, httpx.HTTPError):
            self.delay = self._loop.failed(self.replica, _translate(exc, self.replica.url))
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
        """The 2xx answer's JSON."""
        assert self.response is not None
        return _core.decode_json(self.response.content, self.url)


class _Base(Generic[_Transport]):
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
        )
        self._replicas = Replicas(self._config.base_urls, self._config.cooldown)
        self._rng = random.Random()
        self._model: str | None = self._config.model
        # Several URLs may serve several models: each call goes to the servers of its model (see _routing).
        # One URL is not routed: it gets every call, and its own 404 says when it does not serve a model.
        self._routed = len(self._config.base_urls) > 1
        # plan_rerank with this client's chunk size; a call passes rerank()'s options in order
        self._plan = functools.partial(_core.plan_rerank, max_docs_per_request=self._config.max_docs_per_request)
        self._open(transport)

    def _open(self, transport: _Transport | None) -> None:
        raise NotImplementedError

    def _http_options(self) -> dict[str, Any]:
        return {
            "headers": self._config.request_headers(),
            "timeout": _timeout(self._config.timeout),
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


class RerankClient(_Base[httpx.BaseTransport]):
    """Synchronous client. Thread-safe; use one per process and close it (or use ``with``).

    ``base_url`` may be a list: requests go to the replica with the fewest in flight, and a replica
    that refuses connections or answers 5xx is skipped for ``cooldown`` seconds. ``timeout`` bounds
    one request, ``deadline`` one call (retries and backoff included). Arguments left out
    come from RERANK_KIT_* variables, then from the defaults in ``rerank_kit._config``.

        client = RerankClient(["http://gpu-1:8000", "http://gpu-2:8000"], api_key="...")
        top = client.rerank(query, documents, top_n=5).results
    """

    def _open(self, transport: httpx.BaseTransport | None) -> None:
        self._http = httpx.Client(transport=transport, **self._http_options())
        self._model_lock = threading.Lock()
        self._discovery_lock = threading.Lock()

    # --- I/O ---------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        json: Any = None,
        call: Call | None = None,
        among: tuple[Replica, ...] | None = None,
    ) -> Any:
        loop, content, headers = self._start(method, path, json, call, among)
        while True:
            with _Attempt(loop, path) as attempt:
                attempt.response = self._http.request(
                    method, attempt.url, content=content, headers=headers, timeout=attempt.timeout
                )
            if attempt.delay is None:
                return attempt.answer()
            time.sleep(attempt.delay)

    def _resolve_model(self, model: str | None, call: Call) -> str:
        if model is not None:
            return model
        with self._model_lock:  # threads sharing the client ask the server once, not once each
            if self._model is None:
                self._model = _core.first_model(self._request("GET", MODELS_PATH, call=call))
        return self._model

    def _route(self, model: str | None, call: Call) -> Route:
        """The model a call sends and the replicas that serve it; the table's answer once it is known."""
        if not self._routed:
            return Route(self._resolve_model(model, call), None)
        discovery = self._discovery(model, call)
        try:
            route = discovery.cached()
        except ModelNotServedError:  # the table may predate a switch to this model: ask everyone first
            self._ask_all(discovery)
            route = discovery.cached()
        while route is None:
            # One thread asks at a time (the others then find the answer); a call the table can route
            # already does not wait for it.
            known = discovery.known()
            if known is not None:
                if not self._discovery_lock.acquire(blocking=False):
                    return known
            elif not self._discovery_lock.acquire(timeout=max(0.0, call.remaining())):
                raise discovery.give_up(out_of_time=True)
            try:
                self._ask_models(discovery.to_ask(), discovery)
            finally:
                self._discovery_lock.release()
            route = discovery.known()
            if route is None:
                time.sleep(discovery.wait())
        return route

    def _ask_models(self, replicas: Sequence[Replica], discovery: Discovery) -> None:
        def ask(replica: Replica) -> list[str] | APIError:
            url = replica.url + MODELS_PATH
            try:
                return _model_names(self._http.get(url, timeout=_timeout(discovery.ask_timeout())), url)
            except httpx.HTTPError as exc:
                return _translate(exc, replica.url)

        if len(replicas) > 1:
            with ThreadPoolExecutor(max_workers=len(replicas)) as pool:
                answers = list(pool.map(ask, replicas))
        else:
            answers = [ask(replica) for replica in replicas]
        for replica, answer in zip(replicas, answers, strict=True):
            discovery.answered(replica, answer)

    def _ask_all(self, discovery: Discovery) -> None:
        with self._discovery_lock:
            self._ask_models(self._replicas.replicas, discovery)

    def _post(self, path: str, payload: Any, route: Route, call: Call) -> Any:
        resends = len(self._replicas.replicas)  # each stale answer takes one server out of the route
        while True:
            try:
                return self._request("POST", path, payload, call, route.replicas)
            except NotFoundError as error:
                if not self._stale(error, route) or resends == 0:
                    raise
            resends -= 1
            route = self._route(route.model, call)

    def _probe(self, url: str, timeout: float) -> HealthStatus:
        start = time.perf_counter()
        try:
            health = self._http.get(url + HEALTH_PATH, timeout=timeout)
            latency_ms = (time.perf_counter() - start) * 1000
            if health.status_code != 200:
                return _core.health_status(url, health.status_code, latency_ms)
            models = self._http.get(url + MODELS_PATH, timeout=timeout)
            version = self._http.get(url + VERSION_PATH, timeout=timeout)
        except httpx.HTTPError as exc:
            return _core.health_status(url, error=_translate(exc, url))
        return _core.health_status(url, health.status_code, latency_ms, models.content, version.content)

    # --- API ---------------------------------------------------------------------------------------

    def rerank(
        self,
        query: str,
        documents: Sequence[Any],
        *,
        top_n: int | None = None,
        model: str | None = None,
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
        return_documents: bool = True,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
    ) -> RerankResponse:
        """Score ``documents`` against ``query``; results best first, with each document's original index.

        Documents may be strings, dicts with a "text" field, or objects with ``.text``/``.page_content``;
        the object itself comes back on each result. Lists longer than ``max_docs_per_request`` are
        split into concurrent requests and merged; identical documents are scored once.

        ``timeout`` bounds each request; ``deadline`` bounds the whole call (every chunk, retry and
        backoff): past it the call raises :class:`~rerank_kit.errors.APITimeoutError`.
        """
        call = self._call(timeout, max_retries, deadline)
        plan = self._plan(query, documents, top_n, instruction, max_tokens_per_doc, return_documents)
        route = self._route(model, call)
        name = route.model
        if not plan.unique_texts:
            return _core.empty_rerank(name)
        check_instruction(name, instruction)

        def send(chunk: int) -> Any:
            return self._post(RERANK_PATH, plan.payload(chunk, name), route, call)

        if len(plan.chunks) == 1:
            bodies = [send(0)]
        else:
            with ThreadPoolExecutor(max_workers=min(len(plan.chunks), self._config.max_concurrency)) as pool:
                bodies = list(pool.map(send, range(len(plan.chunks))))
        return _core.merge_rerank(plan, bodies, name)

    def score(
        self,
        queries: str | Sequence[str],
        documents: str | Sequence[str],
        *,
        model: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
    ) -> ScoreResponse:
        """Scores for 1:1, 1:N (one query) or N:N (paired lists) in input order, via /v1/score.

        ``timeout`` and ``deadline`` as in :meth:`rerank`.
        """
        call = self._call(timeout, max_retries, deadline)
        route = self._route(model, call)
        payload, expected = _core.score_payload(queries, documents, route.model)
        body = self._post(SCORE_PATH, payload, route, call)
        return _core.parse_score(body, expected, route.model)

    def models(self) -> list[str]:
        """Model names the server serves (/v1/models); with several URLs, every server's, each once.

        With several URLs it asks every server again, which also refreshes which server serves what.
        """
        if not self._routed:
            return _core.parse_models(self._request("GET", MODELS_PATH))
        discovery = self._discovery(None, self._call())
        self._ask_all(discovery)
        return _core.served_names(self._replicas.served(), discovery.last_error)

    def health(self, *, timeout: float = DEFAULT_HEALTH_TIMEOUT) -> list[HealthStatus]:
        """One status per replica: /health, the served models and the vLLM version. Never raises."""
        return [self._probe(url, timeout) for url in self._config.base_urls]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRerankClient(_Base[httpx.AsyncBaseTransport]):
    """The asyncio twin of :class:`RerankClient`, with the same methods as coroutines.

    async with AsyncRerankClient("http://127.0.0.1:8000") as client:
        response = await client.rerank(query, documents, top_n=5)
    """

    def _open(self, transport: httpx.AsyncBaseTransport | None) -> None:
        # Connections spread over small pools (see _lanes.py) unless a transport is injected (tests).
        # The client's own limits apply only to proxies that httpx mounts from the environment.
        self._http = httpx.AsyncClient(transport=transport or LaneTransport(), **self._http_options())
        # made on first use, inside the caller's event loop
        self._model_lock: asyncio.Lock | None = None
        self._discovery_lock: asyncio.Lock | None = None

    async def _request(
        self,
        method: str,
        path: str,
        json: Any = None,
        call: Call | None = None,
        among: tuple[Replica, ...] | None = None,
    ) -> Any:
        loop, content, headers = self._start(method, path, json, call, among)
        while True:
            with _Attempt(loop, path) as attempt:
                attempt.response = await self._http.request(
                    method, attempt.url, content=content, headers=headers, timeout=attempt.timeout
                )
            if attempt.delay is None:
                return attempt.answer()
            await asyncio.sleep(attempt.delay)

    async def _resolve_model(self, model: str | None, call: Call) -> str:
        if model is not None:
            return model
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        async with self._model_lock:
            if self._model is None:
                self._model = _core.first_model(await self._request("GET", MODELS_PATH, call=call))
        return self._model

    async def _route(self, model: str | None, call: Call) -> Route:
        """See :meth:`RerankClient._route`."""
        if not self._routed:
            return Route(await self._resolve_model(model, call), None)
        discovery = self._discovery(model, call)
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        try:
            route = discovery.cached()
        except ModelNotServedError:
            await self._ask_all(discovery)
            route = discovery.cached()
        while route is None:
            known = discovery.known()
            if known is not None and self._discovery_lock.locked():
                return known
            try:
                await asyncio.wait_for(self._discovery_lock.acquire(), max(0.0, call.remaining()))
            except TimeoutError:
                raise discovery.give_up(out_of_time=True) from None
            try:
                await self._ask_models(discovery.to_ask(), discovery)
            finally:
                self._discovery_lock.release()
            route = discovery.known()
            if route is None:
                await asyncio.sleep(discovery.wait())
        return route

    async def _ask_models(self, replicas: Sequence[Replica], discovery: Discovery) -> None:
        async def ask(replica: Replica) -> list[str] | APIError:
            url = replica.url + MODELS_PATH
            try:
                return _model_names(await self._http.get(url, timeout=_timeout(discovery.ask_timeout())), url)
            except httpx.HTTPError as exc:
                return _translate(exc, replica.url)

        answers = await asyncio.gather(*(ask(replica) for replica in replicas))
        for replica, answer in zip(replicas, answers, strict=True):
            discovery.answered(replica, answer)

    async def _ask_all(self, discovery: Discovery) -> None:
        if self._discovery_lock is None:
            self._discovery_lock = asyncio.Lock()
        async with self._discovery_lock:
            await self._ask_models(self._replicas.replicas, discovery)

    async def _post(self, path: str, payload: Any, route: Route, call: Call) -> Any:
        resends = len(self._replicas.replicas)  # each stale answer takes one server out of the route
        while True:
            try:
                return await self._request("POST", path, payload, call, route.replicas)
            except NotFoundError as error:
                if not self._stale(error, route) or resends == 0:
                    raise
            resends -= 1
            route = await self._route(route.model, call)

    async def _probe(self, url: str, timeout: float) -> HealthStatus:
        start = time.perf_counter()
        try:
            health = await self._http.get(url + HEALTH_PATH, timeout=timeout)
            latency_ms = (time.perf_counter() - start) * 1000
            if health.status_code != 200:
                return _core.health_status(url, health.status_code, latency_ms)
            models = await self._http.get(url + MODELS_PATH, timeout=timeout)
            version = await self._http.get(url + VERSION_PATH, timeout=timeout)
        except httpx.HTTPError as exc:
            return _core.health_status(url, error=_translate(exc, url))
        return _core.health_status(url, health.status_code, latency_ms, models.content, version.content)

    async def rerank(
        self,
        query: str,
        documents: Sequence[Any],
        *,
        top_n: int | None = None,
        model: str | None = None,
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
        return_documents: bool = True,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
    ) -> RerankResponse:
        """See :meth:`RerankClient.rerank`."""
        call = self._call(timeout, max_retries, deadline)
        plan = self._plan(query, documents, top_n, instruction, max_tokens_per_doc, return_documents)
        route = await self._route(model, call)
        name = route.model
        if not plan.unique_texts:
            return _core.empty_rerank(name)
        check_instruction(name, instruction)
        limit = asyncio.Semaphore(self._config.max_concurrency)

        async def send(chunk: int) -> Any:
            async with limit:
                return await self._post(RERANK_PATH, plan.payload(chunk, name), route, call)

        if len(plan.chunks) == 1:  # no task per request in the common case
            bodies = [await send(0)]
        else:
            bodies = await asyncio.gather(*(send(i) for i in range(len(plan.chunks))))
        return _core.merge_rerank(plan, bodies, name)

    async def score(
        self,
        queries: str | Sequence[str],
        documents: str | Sequence[str],
        *,
        model: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
    ) -> ScoreResponse:
        """See :meth:`RerankClient.score`."""
        call = self._call(timeout, max_retries, deadline)
        route = await self._route(model, call)
        payload, expected = _core.score_payload(queries, documents, route.model)
        body = await self._post(SCORE_PATH, payload, route, call)
        return _core.parse_score(body, expected, route.model)

    async def models(self) -> list[str]:
        """See :meth:`RerankClient.models`."""
        if not self._routed:
            return _core.parse_models(await self._request("GET", MODELS_PATH))
        discovery = self._discovery(None, self._call())
        await self._ask_all(discovery)
        return _core.served_names(self._replicas.served(), discovery.last_error)

    async def health(self, *, timeout: float = DEFAULT_HEALTH_TIMEOUT) -> list[HealthStatus]:
        """See :meth:`RerankClient.health`."""
        return [await self._probe(url, timeout) for url in self._config.base_urls]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
