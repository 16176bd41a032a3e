"""Retry decisions and one call's budget. No I/O.

What an answer means (:func:`error_from_response`), whether to try again and after how long
(:func:`retry_delay`), and what one call may spend and has tried (:class:`Call`: timeout, retries,
deadline). Which replica takes each try, and the loop both clients drive, are in ``replicas``.

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
from collections.abc import Mapping
from typing import Any

from rerank_kit.client._config import INITIAL_BACKOFF, MAX_BACKOFF, MAX_RETRY_AFTER
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


def log_replay(method: str, url: str, error: APIError) -> None:
    logger.info("rerank-kit: sending %s %s once more (not a retry): %s", method, url, error)


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
