"""AsyncRerankClient: the asyncio twin of ``client.RerankClient``, with the same methods as coroutines; it
differs only in how it sends (``_lanes``, ``asyncio.gather``, asyncio locks).

    async with AsyncRerankClient("http://127.0.0.1:8000") as client:
        response = await client.rerank("What is vLLM?", ["vLLM is an inference engine.", "Paris is in France."])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

from rerank_kit.client import _core
from rerank_kit.client._base_client import Attempt, BaseClient, httpx_timeout, model_names, translate_error
from rerank_kit.client._config import (
    DEFAULT_HEALTH_TIMEOUT,
    HEALTH_PATH,
    MODELS_PATH,
    RERANK_PATH,
    SCORE_PATH,
    VERSION_PATH,
)
from rerank_kit.client._lanes import LaneTransport
from rerank_kit.client._retry import Call
from rerank_kit.client.probe import probe_async
from rerank_kit.client.replicas import Discovery, Replica, Route
from rerank_kit.errors import APIError, ModelNotServedError, NotFoundError
from rerank_kit.recipes import check_instruction
from rerank_kit.types import HealthStatus, RerankResponse, ScoreResponse


class AsyncRerankClient(BaseClient[httpx.AsyncBaseTransport]):
    """The asyncio twin of :class:`RerankClient`, with the same methods as coroutines.

    async with AsyncRerankClient("http://127.0.0.1:8000") as client:
        response = await client.rerank(query, documents, top_n=5)
    """

    def _open(self, transport: httpx.AsyncBaseTransport | None) -> None:
        # Connections spread over small pools (see _lanes.py) unless a transport is injected (tests).
        # The client's own limits apply only to proxies that httpx mounts from the environment.
        self._http = httpx.AsyncClient(transport=transport or LaneTransport(), **self._http_options())
        # An asyncio lock binds to an event loop only when a task first waits for it, so it can be made here.
        self._model_lock = asyncio.Lock()
        self._discovery_lock = asyncio.Lock()

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
            with Attempt(loop, path) as attempt:
                attempt.response = await self._http.request(
                    method, attempt.url, content=content, headers=headers, timeout=attempt.timeout
                )
            if attempt.delay is None:
                return attempt.answer()
            await asyncio.sleep(attempt.delay)

    async def _resolve_model(self, model: str | None, call: Call) -> str:
        if model is not None:
            return model
        async with self._model_lock:
            if self._model is None:
                self._model = _core.first_model(await self._request("GET", MODELS_PATH, call=call))
        return self._model

    async def _route(self, model: str | None, call: Call) -> Route:
        """See :meth:`RerankClient._route`."""
        if not self._routed:
            return Route(await self._resolve_model(model, call), None)
        discovery = self._discovery(model, call)
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
                timeout = httpx_timeout(discovery.ask_timeout())
                return model_names(await probe_async(replica.url, MODELS_PATH, timeout=timeout, http=self._http), url)
            except httpx.HTTPError as exc:
                return translate_error(exc, replica.url)

        answers = await asyncio.gather(*(ask(replica) for replica in replicas))
        for replica, answer in zip(replicas, answers, strict=True):
            discovery.answered(replica, answer)

    async def _ask_all(self, discovery: Discovery) -> None:
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
            health = await probe_async(url, HEALTH_PATH, timeout=timeout, http=self._http)
            latency_ms = (time.perf_counter() - start) * 1000
            if health.status_code != 200:
                return _core.health_status(url, health.status_code, latency_ms)
            models = await probe_async(url, MODELS_PATH, timeout=timeout, http=self._http)
            version = await probe_async(url, VERSION_PATH, timeout=timeout, http=self._http)
        except httpx.HTTPError as exc:
            return _core.health_status(url, error=translate_error(exc, url))
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
        max_chunks_per_doc: int | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        max_retries: int | None = None,
    ) -> RerankResponse:
        """See :meth:`RerankClient.rerank`."""
        call = self._call(timeout, max_retries, deadline)
        plan = self._plan(
            query, documents, top_n, instruction, max_tokens_per_doc, return_documents, max_chunks_per_doc
        )
        route = await self._route(model, call)
        name = route.model
        if not plan.unique_texts:
            return _core.empty_rerank(name)
        check_instruction(name, instruction)
        if self._whole(name):  # a listwise model: the list as given, in one request
            plan = self._plan(
                query, documents, top_n, instruction, max_tokens_per_doc, return_documents, max_chunks_per_doc,
                whole=True,
            )  # fmt: skip
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
