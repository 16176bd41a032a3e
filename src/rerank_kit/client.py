"""RerankClient and AsyncRerankClient: typed, retried, load-balanced calls to vLLM's /v1/rerank and /v1/score.

The two classes are thin twins over `rerank_kit._core`: they build the same requests, parse the
same responses and make the same retry decisions; they differ only in how they send.

    from rerank_kit import RerankClient

    with RerankClient("http://127.0.0.1:8000") as client:
        response = client.rerank("What is vLLM?", ["vLLM is an inference engine.", "Paris is in France."], top_n=1)
        print(response.results[0].index, response.results[0].relevance_score)
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from rerank_kit import _core
from rerank_kit.errors import APIConnectionError, APIError, APITimeoutError
from rerank_kit.types import HealthStatus, RerankResponse, ScoreResponse

LANE_WIDTH = 8  # connections per pool of the async client
MAX_LANES = 32  # 256 connections in all, as the sync client's one pool


def _translate(exc: httpx.HTTPError, url: str) -> APIError:
    """The one boundary where httpx exceptions become rerank-kit's."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer from {url} in time ({type(exc).__name__})")
    return APIConnectionError(f"cannot reach {url}: {exc or type(exc).__name__}")


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, _core.DEFAULT_CONNECT_TIMEOUT))


def _request_timeout(seconds: float | None) -> Any:
    return _timeout(seconds) if seconds is not None else httpx.USE_CLIENT_DEFAULT


def _error(response: httpx.Response, url: str) -> APIError:
    return _core.error_from_response(response.status_code, response.text, response.headers, url)


class _Base:
    def __init__(
        self,
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
        transport: Any = None,
    ) -> None:
        self._config = _core.resolve_config(
            base_url,
            api_key=api_key,
            modal_key=modal_key,
            modal_secret=modal_secret,
            model=model,
            timeout=timeout,
            max_retries=max_retries,
            max_docs_per_request=max_docs_per_request,
            max_concurrency=max_concurrency,
            cooldown=cooldown,
            headers=headers,
        )
        self._replicas = _core.Replicas(self._config.base_urls, self._config.cooldown)
        self._rng = random.Random()
        self._model: str | None = self._config.model
        self._transport = transport

    @property
    def base_urls(self) -> tuple[str, ...]:
        return self._config.base_urls

    def _retry_loop(self, method: str, path: str, max_retries: int | None) -> _core.RetryLoop:
        retries = self._config.max_retries if max_retries is None else max_retries
        return _core.RetryLoop(self._replicas, retries, self._rng, method, path)

    def replica_counts(self) -> dict[str, int]:
        """Successful requests per replica URL since the client was created."""
        return self._replicas.counts()

    def retry_count(self) -> int:
        """Requests retried (or failed over) since the client was created."""
        return self._replicas.retries


class RerankClient(_Base):
    """Synchronous client. Thread-safe; use one per process and close it (or use ``with``).

    ``base_url`` may be a list: requests go to the replica with the fewest in flight, and a replica
    that refuses connections or answers 5xx is skipped for ``cooldown`` seconds.

        client = RerankClient(["http://gpu-1:8000", "http://gpu-2:8000"], api_key="...")
        top = client.rerank(query, documents, top_n=5).results
    """

    def __init__(
        self,
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            modal_key=modal_key,
            modal_secret=modal_secret,
            model=model,
            timeout=timeout,
            max_retries=max_retries,
            max_docs_per_request=max_docs_per_request,
            max_concurrency=max_concurrency,
            cooldown=cooldown,
            headers=headers,
            transport=transport,
        )
        self._http = httpx.Client(
            headers=self._config.request_headers(),
            timeout=_timeout(self._config.timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._model_lock = threading.Lock()

    # --- I/O ---------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, json: Any = None, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Any:
        content, headers = _core.request_body(json)  # encoded once, whatever the retries
        loop = self._retry_loop(method, path, max_retries)
        while True:
            replica = loop.acquire()
            try:
                response = self._http.request(
                    method, replica.url + path, content=content, headers=headers, timeout=_request_timeout(timeout)
                )
            except httpx.HTTPError as exc:
                delay = loop.failed(replica, _translate(exc, replica.url))
            except BaseException:
                loop.abandon(replica)
                raise
            else:
                if response.is_success:
                    loop.succeeded(replica)
                    return _core.decode_json(response.content, replica.url + path)
                delay = loop.failed(replica, _error(response, replica.url + path))
            time.sleep(delay)

    def _resolve_model(self, model: str | None) -> str:
        if model is not None:
            return model
        with self._model_lock:  # threads sharing the client ask the server once, not once each
            if self._model is None:
                names = _core.parse_models(self._request("GET", _core.MODELS_PATH))
                if not names:
                    raise APIError("the server lists no models at /v1/models")
                self._model = names[0]
        return self._model

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
        max_retries: int | None = None,
    ) -> RerankResponse:
        """Score ``documents`` against ``query``; results best first, with each document's original index.

        Documents may be strings, dicts with a "text" field, or objects with ``.text``/``.page_content``;
        the object itself comes back on each result. Lists longer than ``max_docs_per_request`` are
        split into concurrent requests and merged; identical documents are scored once.
        """
        plan = _core.plan_rerank(
            query,
            documents,
            top_n=top_n,
            instruction=instruction,
            max_tokens_per_doc=max_tokens_per_doc,
            return_documents=return_documents,
            max_docs_per_request=self._config.max_docs_per_request,
        )
        name = self._resolve_model(model)
        if not plan.unique_texts:
            return _core.empty_rerank(name)
        _core.check_instruction(name, instruction)

        def send(chunk: int) -> Any:
            return self._request(
                "POST", _core.RERANK_PATH, plan.payload(chunk, name), timeout=timeout, max_retries=max_retries
            )

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
        max_retries: int | None = None,
    ) -> ScoreResponse:
        """Scores for 1:1, 1:N (one query) or N:N (paired lists) in input order, via /v1/score."""
        name = self._resolve_model(model)
        payload, expected = _core.score_payload(queries, documents, name)
        body = self._request("POST", _core.SCORE_PATH, payload, timeout=timeout, max_retries=max_retries)
        return _core.parse_score(body, expected, name)

    def models(self) -> list[str]:
        """Model names the server serves (/v1/models)."""
        return _core.parse_models(self._request("GET", _core.MODELS_PATH))

    def health(self, *, timeout: float = 5.0) -> list[HealthStatus]:
        """One status per replica: /health, the served models and the vLLM version. Never raises."""
        statuses = []
        for url in self._config.base_urls:
            start = time.perf_counter()
            try:
                ok = self._http.get(f"{url}/health", timeout=timeout).status_code == 200
                latency = (time.perf_counter() - start) * 1000
                models = (
                    _core.parse_models(self._http.get(f"{url}{_core.MODELS_PATH}", timeout=timeout).json())
                    if ok
                    else []
                )
                version = self._http.get(f"{url}/version", timeout=timeout).json().get("version") if ok else None
                statuses.append(HealthStatus(url=url, healthy=ok, models=models, version=version, latency_ms=latency))
            except (httpx.HTTPError, ValueError, APIError) as exc:
                statuses.append(
                    HealthStatus(
                        url=url,
                        healthy=False,
                        error=str(_translate(exc, url)) if isinstance(exc, httpx.HTTPError) else str(exc),
                    )
                )
        return statuses

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRerankClient(_Base):
    """The asyncio twin of :class:`RerankClient`, with the same methods as coroutines.

    async with AsyncRerankClient("http://127.0.0.1:8000") as client:
        response = await client.rerank(query, documents, top_n=5)
    """

    def __init__(
        self,
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            modal_key=modal_key,
            modal_secret=modal_secret,
            model=model,
            timeout=timeout,
            max_retries=max_retries,
            max_docs_per_request=max_docs_per_request,
            max_concurrency=max_concurrency,
            cooldown=cooldown,
            headers=headers,
            transport=transport,
        )
        self._transport = transport
        # httpcore's pool scans every connection and queued request on each request, so one pool of
        # 64 busy connections spends more CPU than the requests themselves (profiled: rerank-kit bench
        # at 64 in flight reached a third of `vllm bench serve`'s rate). Requests go to the first of
        # several small pools ("lanes") with room; at low concurrency only the first one is used.
        self._lanes: list[httpx.AsyncClient] = []
        self._lane_load: list[int] = []
        self._http = self._lane(0)
        self._model_lock: asyncio.Lock | None = None

    def _lane(self, i: int) -> httpx.AsyncClient:
        while len(self._lanes) <= i:
            self._lanes.append(
                httpx.AsyncClient(
                    headers=self._config.request_headers(),
                    timeout=_timeout(self._config.timeout),
                    transport=self._transport,
                    limits=httpx.Limits(max_connections=LANE_WIDTH, max_keepalive_connections=LANE_WIDTH),
                )
            )
            self._lane_load.append(0)
        return self._lanes[i]

    def _pick_lane(self) -> int:
        for i, load in enumerate(self._lane_load):
            if load < LANE_WIDTH:
                return i
        return len(self._lane_load) if len(self._lane_load) < MAX_LANES else self._lane_load.index(min(self._lane_load))

    async def _request(
        self, method: str, path: str, json: Any = None, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Any:
        content, headers = _core.request_body(json)  # encoded once, whatever the retries
        loop = self._retry_loop(method, path, max_retries)
        while True:
            replica = loop.acquire()
            lane = self._pick_lane()
            http = self._lane(lane)
            self._lane_load[lane] += 1
            try:
                try:
                    response = await http.request(
                        method, replica.url + path, content=content, headers=headers, timeout=_request_timeout(timeout)
                    )
                finally:
                    self._lane_load[lane] -= 1
            except httpx.HTTPError as exc:
                delay = loop.failed(replica, _translate(exc, replica.url))
            except BaseException:
                loop.abandon(replica)
                raise
            else:
                if response.is_success:
                    loop.succeeded(replica)
                    return _core.decode_json(response.content, replica.url + path)
                delay = loop.failed(replica, _error(response, replica.url + path))
            await asyncio.sleep(delay)

    async def _resolve_model(self, model: str | None) -> str:
        if model is not None:
            return model
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        async with self._model_lock:
            if self._model is None:
                names = _core.parse_models(await self._request("GET", _core.MODELS_PATH))
                if not names:
                    raise APIError("the server lists no models at /v1/models")
                self._model = names[0]
        return self._model

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
        max_retries: int | None = None,
    ) -> RerankResponse:
        """See :meth:`RerankClient.rerank`."""
        plan = _core.plan_rerank(
            query,
            documents,
            top_n=top_n,
            instruction=instruction,
            max_tokens_per_doc=max_tokens_per_doc,
            return_documents=return_documents,
            max_docs_per_request=self._config.max_docs_per_request,
        )
        name = await self._resolve_model(model)
        if not plan.unique_texts:
            return _core.empty_rerank(name)
        _core.check_instruction(name, instruction)
        limit = asyncio.Semaphore(self._config.max_concurrency)

        async def send(chunk: int) -> Any:
            async with limit:
                return await self._request(
                    "POST", _core.RERANK_PATH, plan.payload(chunk, name), timeout=timeout, max_retries=max_retries
                )

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
        max_retries: int | None = None,
    ) -> ScoreResponse:
        """See :meth:`RerankClient.score`."""
        name = await self._resolve_model(model)
        payload, expected = _core.score_payload(queries, documents, name)
        body = await self._request("POST", _core.SCORE_PATH, payload, timeout=timeout, max_retries=max_retries)
        return _core.parse_score(body, expected, name)

    async def models(self) -> list[str]:
        """See :meth:`RerankClient.models`."""
        return _core.parse_models(await self._request("GET", _core.MODELS_PATH))

    async def health(self, *, timeout: float = 5.0) -> list[HealthStatus]:
        """See :meth:`RerankClient.health`."""
        statuses = []
        for url in self._config.base_urls:
            start = time.perf_counter()
            try:
                ok = (await self._http.get(f"{url}/health", timeout=timeout)).status_code == 200
                latency = (time.perf_counter() - start) * 1000
                models = (
                    _core.parse_models((await self._http.get(f"{url}{_core.MODELS_PATH}", timeout=timeout)).json())
                    if ok
                    else []
                )
                version = (
                    (await self._http.get(f"{url}/version", timeout=timeout)).json().get("version") if ok else None
                )
                statuses.append(HealthStatus(url=url, healthy=ok, models=models, version=version, latency_ms=latency))
            except (httpx.HTTPError, ValueError, APIError) as exc:
                statuses.append(
                    HealthStatus(
                        url=url,
                        healthy=False,
                        error=str(_translate(exc, url)) if isinstance(exc, httpx.HTTPError) else str(exc),
                    )
                )
        return statuses

    async def aclose(self) -> None:
        for http in self._lanes:
            await http.aclose()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
