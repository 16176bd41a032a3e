"""Retry decisions, the replica table, one call's budget, and the retry loop both clients drive. No I/O.

What an answer means (:func:`error_from_response`), whether to try again and after how long
(:func:`retry_delay`), which replica takes the next try (:class:`Replicas`, which also records the
models each serves: see ``_routing``), what one call may spend and has tried (:class:`Call`: timeout,
retries, deadline), and the state of one request across its tries (:class:`RetryLoop`).

    >>> retry_after_seconds("2")
    2.0
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from rerank_kit._config import INITIAL_BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER, MIN_ATTEMPT_TIME
from rerank_kit.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RequestTimeoutError,
    status_error,
)

logger = logging.getLogger("rerank_kit")


# --- errors and retries -----------------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(status: int, body_text: str, headers: Mapping[str, str], url: str) -> APIStatusError:
    """The typed error for a non-2xx answer, carrying vLLM's message, type and param, and Retry-After."""
    try:
        body: Any = json.loads(body_text) if body_text else None
    except ValueError:
        body = body_text
    return status_error(status, body, url=url, retry_after=retry_after_seconds(headers.get("retry-after")))


def is_replica_failure(error: APIError) -> bool:
    """Errors that say "this server cannot serve right now": skip it for a while, try another."""
    return isinstance(error, (APIConnectionError, InternalServerError, RateLimitError, RequestTimeoutError))


def retry_delay(error: APIError, attempt: int, max_retries: int, *, failover: bool, rng: random.Random) -> float | None:
    """Seconds to wait before retry number ``attempt + 1``, or None when the error is final.

    Connection errors, 408, 429 and 5xx are retried; everything else (400, 401, 404, 413, 422) is
    not. ``Retry-After`` is honoured (capped); otherwise exponential backoff with jitter. When another
    replica can take the request (``failover``), it is sent there at once.

    A 429 with ``Retry-After`` is a server shedding load and naming when to come back (rerank-kit's
    guard does this past ``--max-in-flight``): it is retried past ``max_retries``, until the call's
    deadline, unless ``max_retries`` is 0. Counting it would lose requests in every burst larger than
    the server's bound (measured: bench/overload.py, 256 in flight against a bound of 32).
    """
    if not error.retryable or (attempt >= max_retries and not (is_shed(error) and max_retries > 0)):
        return None
    if failover:
        return 0.0
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    backoff = min(MAX_BACKOFF, INITIAL_BACKOFF * (2**attempt))
    return backoff / 2 + rng.uniform(0, backoff / 2)  # "equal jitter": spread out, never near zero


def is_model_missing(error: APIError) -> bool:
    """vLLM's 404 for a model the server does not serve ("The model `x` does not exist.", param "model"),
    as opposed to a 404 for a path."""
    return isinstance(error, NotFoundError) and (error.param == "model" or "does not exist" in error.message)


def went_away(error: APIError) -> bool:
    """The server is gone (refused, reset): when it comes back it may serve another model. A timeout
    is a busy server, not a gone one."""
    return isinstance(error, APIConnectionError) and not isinstance(error, APITimeoutError)


def is_shed(error: APIError) -> bool:
    """A 429 that says when to come back: the server is shedding load, not refusing this request."""
    return isinstance(error, RateLimitError) and error.retry_after is not None


def log_retry(method: str, url: str, error: APIError, delay: float, attempt: int, max_retries: int) -> None:
    count = f"{attempt + 1} of {max_retries}" if attempt < max_retries else f"{attempt + 1}, until the deadline"
    logger.warning("rerank-kit: retrying %s %s in %.2f s (retry %s): %s", method, url, delay, count, error)


# --- replicas -----------------------------------------------------------------------------------------


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    served: int = 0
    # The names its /v1/models lists, the one it serves by default first; None until it was asked, and
    # again after it went away (it may come back serving another model).
    models: tuple[str, ...] | None = None
    error: str = ""  # why it was last forgotten, for the error that names servers which could not be asked


class _Table(NamedTuple):
    """Which replica serves which model, as known; swapped whole, so readers need no lock."""

    serving: dict[str, tuple[Replica, ...]]  # model name -> the replicas that list it
    defaults: tuple[str, ...]  # the distinct names known replicas serve by default (their first)
    unknown: tuple[Replica, ...]  # replicas whose models are not known


class Replicas:
    """Least-outstanding-requests choice among replicas, skipping failed ones for a cool-down, and
    which model each serves (see ``_routing.Discovery``); a call's choice can be limited to its model's.

    Thread-safe; the async client uses it from one event loop.

        >>> replicas = Replicas(["http://a:1"], cooldown=5.0)
        >>> replica = replicas.acquire()
        >>> replicas.release(replica, ok=True)
        >>> replicas.counts()
        {'http://a:1': 1}
    """

    def __init__(self, urls: Sequence[str], cooldown: float, rng: random.Random | None = None) -> None:
        self.replicas = [Replica(u) for u in urls]
        self.cooldown = cooldown
        self.retries = 0  # retries decided so far (failovers included); see count_retry
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self.table = _Table({}, (), tuple(self.replicas))

    def acquire(
        self, now: float | None = None, avoid: Replica | None = None, among: Sequence[Replica] | None = None
    ) -> Replica:
        """The replica for the next request: among ``among`` (default: all), the healthy one with the
        fewest requests in flight, other than ``avoid`` when another is healthy."""
        now = time.monotonic() if now is None else now
        pool = self.replicas if among is None else among
        with self._lock:
            healthy = [r for r in pool if r.down_until <= now and r is not avoid]
            if not healthy:
                healthy = [r for r in pool if r.down_until <= now] or [min(pool, key=lambda r: r.down_until)]
            least = min(r.outstanding for r in healthy)
            choice = self._rng.choice([r for r in healthy if r.outstanding == least])
            choice.outstanding += 1
            return choice

    def release(self, replica: Replica, *, ok: bool | None, now: float | None = None) -> None:
        """``ok``: True on success, False when the replica failed, None when the request's fault."""
        now = time.monotonic() if now is None else now
        with self._lock:
            replica.outstanding -= 1
            if ok is True:
                replica.failures = 0
                replica.down_until = 0.0
                replica.served += 1
            elif ok is False:
                replica.failures += 1
                replica.down_until = now + self.cooldown

    def has_alternative(
        self, replica: Replica, now: float | None = None, among: Sequence[Replica] | None = None
    ) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return any(r is not replica and r.down_until <= now for r in (self.replicas if among is None else among))

    def count_retry(self) -> None:
        """One more request retried or failed over (what ``retries`` counts)."""
        with self._lock:
            self.retries += 1

    def counts(self) -> dict[str, int]:
        """Successful requests per replica URL."""
        with self._lock:
            return {r.url: r.served for r in self.replicas}

    # --- which replica serves which model ---------------------------------------------------------------

    def learn(self, replica: Replica, models: Sequence[str]) -> None:
        """``replica`` answered /v1/models with ``models``: it serves them (and if it had gone away, it is back)."""
        with self._lock:
            if replica.models is None:
                replica.down_until = 0.0
            replica.models = tuple(models)
            replica.error = ""
            self._rebuild()

    def forget(self, replica: Replica, error: APIError | None = None, *, cool_down: bool = False) -> None:
        """What ``replica`` serves is not known any more: ``error`` says why; ``cool_down`` skips it
        for the cool-down (it failed)."""
        with self._lock:
            if error is not None:
                replica.error = str(error)
            if cool_down:
                replica.failures += 1
                replica.down_until = time.monotonic() + self.cooldown
            if replica.models is not None:
                replica.models = None
                self._rebuild()

    def _rebuild(self) -> None:
        serving: dict[str, list[Replica]] = {}
        for replica in self.replicas:
            for name in replica.models or ():
                serving.setdefault(name, []).append(replica)
        self.table = _Table(
            serving={name: tuple(replicas) for name, replicas in serving.items()},
            defaults=tuple(dict.fromkeys(r.models[0] for r in self.replicas if r.models)),
            unknown=tuple(r for r in self.replicas if r.models is None),
        )

    def recheck_due(self, now: float | None = None) -> bool:
        """A replica whose models are not known may be asked again: its cool-down is over."""
        unknown = self.table.unknown
        if not unknown:  # the steady state: nothing more to check
            return False
        now = time.monotonic() if now is None else now
        return any(r.down_until <= now for r in unknown)

    def served(self) -> dict[str, list[str]]:
        """Each model name the replicas serve -> their URLs, as known."""
        return {name: [r.url for r in replicas] for name, replicas in self.table.serving.items()}


# --- one call ------------------------------------------------------------------------------------------


class Call:
    """One client call (a rerank, a score): the timeout of each request and the retries each may
    make, the deadline shared by every request the call sends (each chunk of a long list, the model
    lookup, every retry), started at creation, and what the call tried, for the error that ends it.

        >>> call = Call(timeout=60.0, max_retries=8, deadline=120.0)
        >>> call.record("http://a:1")
        >>> 119 < call.remaining() <= 120, call.attempts
        (True, {'http://a:1': 1})
    """

    def __init__(self, timeout: float, max_retries: int, deadline: float) -> None:
        self.timeout = timeout
        self.max_retries = max_retries
        self.deadline = deadline  # seconds from creation
        self._start = time.monotonic()
        self.attempts: dict[str, int] = {}  # replica URL -> requests sent, in the order first tried
        self.last_error: APIError | None = None
        self._lock = threading.Lock()  # the sync client sends a call's chunks from several threads

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def remaining(self) -> float:
        return self.deadline - self.elapsed()

    def record(self, url: str) -> None:
        """One more request sent to ``url``."""
        with self._lock:
            self.attempts[url] = self.attempts.get(url, 0) + 1

    def failed(self, error: APIError) -> None:
        self.last_error = error

    def exceeded(self, request: str, why: str) -> APITimeoutError:
        """The error that ends the call at ``request`` ("POST /v1/rerank"): how long it ran, what it
        sent where, and the last failure."""
        with self._lock:
            attempts = dict(self.attempts)
        count = sum(attempts.values())
        where = ", ".join(f"{url} x{n}" for url, n in attempts.items()) or "no replica"
        last = f"; last error: {self.last_error}" if self.last_error is not None else ""
        elapsed = self.elapsed()
        return APITimeoutError(
            f"{request}: no answer within the {self.deadline:g} s deadline: {count} attempt{'s' if count != 1 else ''} "
            f"({where}) in {elapsed:.2f} s; {why}{last}. "
            "Pass a longer deadline= (or set RERANK_KIT_DEADLINE) if the server needs more time",
            attempts=attempts,
            elapsed=elapsed,
        )


class RetryLoop:
    """The state of one request across its attempts: which replica next, how long each may take,
    and what to do on failure. Every attempt and every wait ends before its :class:`Call`'s deadline.

    Both clients drive it the same way::

        loop = RetryLoop(replicas, rng, method, path, call)
        while True:
            replica = loop.acquire()              # raises APITimeoutError when no time is left
            ... send with loop.attempt_timeout() ...; on success: loop.succeeded(replica); return
            delay = loop.failed(replica, error)   # raises the error when it is final
            sleep(delay)
    """

    def __init__(
        self,
        replicas: Replicas,
        rng: random.Random,
        method: str,
        path: str,
        call: Call,
        among: tuple[Replica, ...] | None = None,
    ) -> None:
        self.replicas = replicas
        self.rng = rng
        self.method = method
        self.path = path
        self.call = call
        self.among = among  # the replicas serving the request's model (its Route); None: any
        self.attempt = 0
        self._avoid: Replica | None = None

    def acquire(self) -> Replica:
        if self.call.remaining() < MIN_ATTEMPT_TIME:  # e.g. a chunk that waited for its turn
            raise self.call.exceeded(f"{self.method} {self.path}", "no time was left to send the request")
        replica = self.replicas.acquire(avoid=self._avoid, among=self.among)
        self.call.record(replica.url)
        return replica

    def attempt_timeout(self) -> float:
        """Seconds this attempt may wait for an answer: the request timeout, cut to the time left."""
        return max(0.0, min(self.call.timeout, self.call.remaining()))

    def succeeded(self, replica: Replica) -> None:
        self.replicas.release(replica, ok=True)

    def abandon(self, replica: Replica) -> None:
        """The request was cancelled (Ctrl-C, task cancellation): free the slot, blame no one."""
        self.replicas.release(replica, ok=None)

    def failed(self, replica: Replica, error: APIError) -> float:
        """Record the failure; return the delay before the next attempt, or raise.

        Raises ``error`` when it is final (a 4xx, or the retries are spent), and the deadline's
        :class:`APITimeoutError` when the next attempt could not start before it: never sleeps past it.
        """
        replica_failed = is_replica_failure(error)
        self.replicas.release(replica, ok=False if replica_failed else None)
        self.call.failed(error)
        if self.among is not None and (went_away(error) or is_model_missing(error)):
            # Routed by model: ask it again before sending it this model's requests (it may serve another now).
            self.replicas.forget(replica, error)
        failover = replica_failed and self.replicas.has_alternative(replica, among=self.among)
        delay = retry_delay(error, self.attempt, self.call.max_retries, failover=failover, rng=self.rng)
        left = self.call.remaining()
        # Sleeping into the deadline would only delay the same error: give up as soon as the next
        # attempt could not start in time.
        if error.retryable and left - (delay or 0.0) < MIN_ATTEMPT_TIME:
            if delay is None or left < MIN_ATTEMPT_TIME:
                why = "the time ran out during the last attempt"
            else:
                why = f"the next retry was due in {delay:.2f} s, with {left:.2f} s left"
            raise self.call.exceeded(f"{self.method} {self.path}", why) from error
        if delay is None:
            raise error
        log_retry(self.method, replica.url + self.path, error, delay, self.attempt, self.call.max_retries)
        self.replicas.count_retry()
        self._avoid = replica if failover else None
        self.attempt += 1
        return delay
