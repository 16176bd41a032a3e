"""Retry decisions, the replica table, and the retry loop both clients drive. No I/O.

What an answer means (:func:`error_from_response`), whether to try again and after how long
(:func:`retry_delay`), which replica takes the next try (:class:`Replicas`), and the state of one
request across its tries (:class:`RetryLoop`).

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
from typing import Any

from rerank_kit._config import INITIAL_BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER
from rerank_kit.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    InternalServerError,
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
    """
    if not error.retryable or attempt >= max_retries:
        return None
    if failover:
        return 0.0
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    backoff = min(MAX_BACKOFF, INITIAL_BACKOFF * (2**attempt))
    return backoff / 2 + rng.uniform(0, backoff / 2)  # "equal jitter": spread out, never near zero


def log_retry(method: str, url: str, error: APIError, delay: float, attempt: int, max_retries: int) -> None:
    logger.warning(
        "rerank-kit: retrying %s %s in %.2f s (retry %d of %d): %s", method, url, delay, attempt + 1, max_retries, error
    )


# --- replicas -----------------------------------------------------------------------------------------


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    served: int = 0


class Replicas:
    """Least-outstanding-requests choice among replicas, skipping failed ones for a cool-down.

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

    def acquire(self, now: float | None = None, avoid: Replica | None = None) -> Replica:
        now = time.monotonic() if now is None else now
        with self._lock:
            healthy = [r for r in self.replicas if r.down_until <= now and r is not avoid]
            if not healthy:
                healthy = [r for r in self.replicas if r.down_until <= now] or [
                    min(self.replicas, key=lambda r: r.down_until)
                ]
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

    def has_alternative(self, replica: Replica, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return any(r is not replica and r.down_until <= now for r in self.replicas)

    def count_retry(self) -> None:
        """One more request retried or failed over (what ``retries`` counts)."""
        with self._lock:
            self.retries += 1

    def counts(self) -> dict[str, int]:
        """Successful requests per replica URL."""
        with self._lock:
            return {r.url: r.served for r in self.replicas}


class RetryLoop:
    """The state of one request across its attempts: which replica next, and what to do on failure.

    Both clients drive it the same way::

        loop = RetryLoop(replicas, max_retries, rng, method, path)
        while True:
            replica = loop.acquire()
            ... send ...; on success: loop.succeeded(replica); return
            delay = loop.failed(replica, error)   # raises the error when it is final
            sleep(delay)
    """

    def __init__(self, replicas: Replicas, max_retries: int, rng: random.Random, method: str, path: str) -> None:
        self.replicas = replicas
        self.max_retries = max_retries
        self.rng = rng
        self.method = method
        self.path = path
        self.attempt = 0
        self._avoid: Replica | None = None

    def acquire(self) -> Replica:
        return self.replicas.acquire(avoid=self._avoid)

    def succeeded(self, replica: Replica) -> None:
        self.replicas.release(replica, ok=True)

    def abandon(self, replica: Replica) -> None:
        """The request was cancelled (Ctrl-C, task cancellation): free the slot, blame no one."""
        self.replicas.release(replica, ok=None)

    def failed(self, replica: Replica, error: APIError) -> float:
        """Record the failure; return the delay before the next attempt, or raise ``error``."""
        replica_failed = is_replica_failure(error)
        self.replicas.release(replica, ok=False if replica_failed else None)
        failover = replica_failed and self.replicas.has_alternative(replica)
        delay = retry_delay(error, self.attempt, self.max_retries, failover=failover, rng=self.rng)
        if delay is None:
            raise error
        log_retry(self.method, replica.url + self.path, error, delay, self.attempt, self.max_retries)
        self.replicas.count_retry()
        self._avoid = replica if failover else None
        self.attempt += 1
        return delay
