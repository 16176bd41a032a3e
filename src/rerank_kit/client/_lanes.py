"""The async client's connection lanes: several small connection pools behind one httpx transport.

httpcore's pool scans every connection and queued request on each request, so one pool of 64 busy
connections spends more CPU than the requests themselves (profiled: rerank-kit bench at 64 in
flight reached a third of `vllm bench serve`'s rate; with lanes of 8 the load generator went from
172 to 405 requests/s, bench/RESULTS.md section 3). Each request goes to the first lane with a free
connection; at low concurrency only the first lane exists.

    client = httpx.AsyncClient(transport=LaneTransport())
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx

from rerank_kit.client._config import LANE_WIDTH, MAX_LANES


class LaneTransport(httpx.AsyncBaseTransport):
    """Routes each request to one of up to ``max_lanes`` pools of ``width`` connections: the first
    with room, else a new one, else the least loaded. Use from one event loop."""

    def __init__(self, width: int = LANE_WIDTH, max_lanes: int = MAX_LANES) -> None:
        self.width = width
        self.max_lanes = max_lanes
        self._lanes: list[httpx.AsyncHTTPTransport] = []
        self._load: list[int] = []  # requests per lane from sending until the answer's body is closed

    def _pick(self) -> int:
        for i, load in enumerate(self._load):
            if load < self.width:
                return i
        if len(self._lanes) < self.max_lanes:
            limits = httpx.Limits(max_connections=self.width, max_keepalive_connections=self.width)
            self._lanes.append(httpx.AsyncHTTPTransport(limits=limits))
            self._load.append(0)
            return len(self._lanes) - 1
        return self._load.index(min(self._load))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane = self._pick()
        self._load[lane] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._load[lane] -= 1

        try:
            response = await self._lanes[lane].handle_async_request(request)
        except BaseException:
            release()
            raise
        # The connection stays busy until the body is read, so the lane counts it until then.
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Releasing(response.stream, release),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response body that frees its lane slot when closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()
