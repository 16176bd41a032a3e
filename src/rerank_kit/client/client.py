"""RerankClient: typed, retried, load-balanced calls to vLLM's /v1/rerank and /v1/score.

It and its asyncio twin (``async_client.AsyncRerankClient``) are thin twins: they build requests and
parse answers with `_core`, decide retries with `_retry`, balance, fail over and route calls by model
with `replicas`, share their configuration and each try's bookkeeping through `_base_client` (where
httpx errors become rerank-kit's), and differ only in how they send (the async one through `_lanes`).

    from rerank_kit import RerankClient

    with RerankClient("http://127.0.0.1:8000") as client:
        response = client.rerank("What is vLLM?", ["vLLM is an inference engine.", "Paris is in France."], top_n=1)
        print(response.results[0].index, response.results[0].relevance_score)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
from rerank_kit.client._retry import Call
from rerank_kit.client.probe import probe
from rerank_kit.client.replicas import Discovery, Replica, Route
from rerank_kit.errors import APIError, ModelNotServedError, NotFoundError
from rerank_kit.recipes import check_instruction
from rerank_kit.types import HealthStatus, RerankResponse, ScoreResponse


class RerankClient(BaseClient[httpx.BaseTransport]):
    """Synchronous client. Thread-safe; use one per process and close it (or use ``with``).

    ``base_url`` may be a list: requests go to the replica with the fewest in flight, and a replica
    that refuses connections or answers 5xx is skipped for ``cooldown`` seconds. ``timeout`` bounds
    one request, ``deadline`` one call (retries and backoff included). Arguments left out
    come from RERANK_KIT_* variables, then from the defaults in ``rerank_kit.client._config``.
    ``whole_lists``: send every rerank list as given, in one request, duplicates included (a listwise model,
    such as jina-reranker-v3, scores each document against the whole list); None: as the recipe table says for
    the model's name, False: split at ``max_docs_per_request`` and score duplicates once.

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
            with Attempt(loop, path) as attempt:
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
                timeout = httpx_timeout(discovery.ask_timeout())
                return model_names(probe(replica.url, MODELS_PATH, timeout=timeout, http=self._http), url)
            except httpx.HTTPError as exc:
                return translate_error(exc, replica.url)

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
            health = probe(url, HEALTH_PATH, timeout=timeout, http=self._http)
            latency_ms = (time.perf_counter() - start) * 1000
            if health.status_code != 200:
                return _core.health_status(url, health.status_code, latency_ms)
            models = probe(url, MODELS_PATH, timeout=timeout, http=self._http)
            version = probe(url, VERSION_PATH, timeout=timeout, http=self._http)
        except httpx.HTTPError as exc:
            return _core.health_status(url, error=translate_error(exc, url))
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
        max_chunks_per_doc: int | None = None,
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
        plan = self._plan(
            query, documents, top_n, instruction, max_tokens_per_doc, return_documents, max_chunks_per_doc
        )
        route = self._route(model, call)
        name = route.model
        if not plan.unique_texts:
            return _core.empty_rerank(name)
        check_instruction(name, instruction)
        if self._whole(name):  # a listwise model: the list as given, in one request
            plan = self._plan(
                query, documents, top_n, instruction, max_tokens_per_doc, return_documents, max_chunks_per_doc,
                whole=True,
            )  # fmt: skip

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
