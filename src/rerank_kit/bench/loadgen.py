"""The load generator: closed loop at a fixed concurrency, or open loop at a Poisson request rate.

Open loop measures each latency from the request's *intended* send time, so a server (or a client)
that falls behind shows its queueing delay instead of hiding it by sending later.

Requests go through rerank-kit's own AsyncRerankClient, one workload case per request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rerank_kit.bench.workloads import Workload
from rerank_kit.client import AsyncRerankClient
from rerank_kit.errors import APIStatusError, RerankKitError


@dataclass
class Sample:
    """One request as measured."""

    case: int
    intended: float
    started: float
    finished: float
    ok: bool
    error: str | None = None
    pairs: int = 0
    # pairs the server scored: more than ``pairs`` when it read long documents in windows (0: it did not say)
    scored: int = 0
    tokens: int = 0
    scores: list[float] | None = None  # per document of the case, in order (kept for quality metrics)
    model: str | None = None  # the model that answered (its "model"): shows a switch in the report

    @property
    def latency(self) -> float:
        return self.finished - self.intended


@dataclass
class LoadConfig:
    concurrency: int = 16
    rate: float | None = None  # requests/s; None = closed loop
    requests: int | None = None
    duration: float | None = None
    warmup: int = 8  # requests sent (and discarded) before measuring
    seed: int = 0
    keep_scores: bool = False
    max_chunks_per_doc: int | None = None  # sent with every request (None: the server's default)


@dataclass
class LoadResult:
    samples: list[Sample]
    wall: float  # seconds of the measured phase
    interrupted: bool = False
    warmup_samples: list[Sample] = field(default_factory=list)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, APIStatusError):
        return f"{type(exc).__name__}({exc.status_code})"
    return type(exc).__name__


async def _one(
    client: AsyncRerankClient, workload: Workload, index: int, intended: float, keep: bool, chunks: int | None = None
) -> Sample:
    case = workload.cases[index % len(workload.cases)]
    started = time.perf_counter()
    try:
        response = await client.rerank(
            case.query, case.documents, instruction=case.instruction, return_documents=False, max_chunks_per_doc=chunks
        )
    except RerankKitError as exc:
        return Sample(
            index % len(workload.cases), intended, started, time.perf_counter(), ok=False, error=error_kind(exc)
        )
    finished = time.perf_counter()
    scores = None
    if keep:
        scores = [0.0] * len(case.documents)
        for r in response.results:
            scores[r.index] = r.relevance_score
    return Sample(
        index % len(workload.cases),
        intended,
        started,
        finished,
        ok=True,
        pairs=len(case.documents),
        scored=response.pairs or 0,
        tokens=response.usage.prompt_tokens,
        scores=scores,
        model=response.model or None,
    )


async def run_load(
    client: AsyncRerankClient,
    workload: Workload,
    config: LoadConfig,
    *,
    on_progress: Callable[[Sample, float], None] | None = None,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Warm up, then send the measured requests; stops early (keeping what was measured) when ``stop`` is set."""
    if not workload.cases:
        raise RerankKitError("the workload has no cases")
    if config.requests is None and config.duration is None:
        config.requests = len(workload.cases)
    stop = stop or asyncio.Event()

    warm = await _closed(client, workload, config, count=config.warmup, deadline=None, stop=stop, offset=0)
    start = time.perf_counter()
    deadline = start + config.duration if config.duration else None

    def progress(sample: Sample) -> None:
        if on_progress is not None:
            on_progress(sample, time.perf_counter() - start)

    if config.rate:
        samples = await _open(client, workload, config, deadline=deadline, stop=stop, progress=progress)
    else:
        samples = await _closed(
            client,
            workload,
            config,
            count=config.requests,
            deadline=deadline,
            stop=stop,
            progress=progress,
            offset=config.warmup,
        )
    return LoadResult(samples=samples, wall=time.perf_counter() - start, interrupted=stop.is_set(), warmup_samples=warm)


async def _closed(
    client: AsyncRerankClient,
    workload: Workload,
    config: LoadConfig,
    *,
    count: int | None,
    deadline: float | None,
    stop: asyncio.Event,
    offset: int,
    progress: Callable[[Sample], None] | None = None,
) -> list[Sample]:
    """``config.concurrency`` workers, each sending its next request as soon as the last one returns."""
    if count == 0:
        return []
    samples: list[Sample] = []
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while not stop.is_set():
            if (count is not None and issued >= count) or (deadline is not None and time.perf_counter() >= deadline):
                return
            index = offset + issued
            issued += 1
            sample = await _one(
                client, workload, index, time.perf_counter(), config.keep_scores, config.max_chunks_per_doc
            )
            samples.append(sample)
            if progress is not None:
                progress(sample)

    await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    return samples


async def _open(
    client: AsyncRerankClient,
    workload: Workload,
    config: LoadConfig,
    *,
    deadline: float | None,
    stop: asyncio.Event,
    progress: Callable[[Sample], None],
) -> list[Sample]:
    """Poisson arrivals at ``config.rate``; each request starts at its intended time (or as soon after as it can)."""
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    offsets = poisson_offsets(config.rate, config.seed)  # type: ignore[arg-type]
    next_at = start + next(offsets)
    index = 0

    async def send(i: int, intended: float) -> None:
        sample = await _one(
            client, workload, config.warmup + i, intended, config.keep_scores, config.max_chunks_per_doc
        )
        samples.append(sample)
        progress(sample)

    while not stop.is_set():
        if config.requests is not None and index >= config.requests:
            break
        if deadline is not None and next_at >= deadline:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                break
            except TimeoutError:
                pass
        task = asyncio.create_task(send(index, next_at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
        next_at = start + next(offsets)
    if tasks:
        await asyncio.gather(*tasks)
    return samples


def poisson_offsets(rate: float, seed: int = 0) -> Iterator[float]:
    """Intended send times (seconds from the start) of a Poisson process at ``rate`` requests/s."""
    rng = random.Random(seed)
    t = 0.0
    while True:
        yield t
        t += rng.expovariate(rate)
