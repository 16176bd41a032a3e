"""A client's replicas: least-outstanding balancing with a cool-down for failed ones (:class:`Replicas`), the
retry loop over them both clients drive (:class:`RetryLoop`), and routing by model (:class:`Discovery`): which
of the servers serve which model, found from their /v1/models, kept in the same table.

A client given several URLs asks each server once, on first use, which models it serves (vLLM lists
its --served-model-name, else its --model), and sends each call to the servers of the call's model,
balancing and failing over among them as among any replicas (``Replicas``, ``RetryLoop``).
A server that went away, or that answers "model does not exist" for a model it listed (it was
switched), is asked again. No I/O here: the clients send the requests (``client.py``).

    >>> from rerank_kit.client._retry import Call
    >>> replicas = Replicas(["http://a:1", "http://b:1"], cooldown=5.0)
    >>> discovery = Discovery(replicas, "m2", Call(60.0, 8, 120.0), random.Random(0))
    >>> [r.url for r in discovery.to_ask()]
    ['http://a:1', 'http://b:1']
    >>> discovery.answered(replicas.replicas[0], ["m1"]); discovery.answered(replicas.replicas[1], ["m2"])
    >>> route = discovery.known()
    >>> route.model, [r.url for r in route.replicas]
    ('m2', ['http://b:1'])
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from rerank_kit.client._config import MIN_ATTEMPT_TIME, MODELS_PATH, MODELS_TIMEOUT
from rerank_kit.client._retry import (
    Call,
    is_model_missing,
    is_replica_failure,
    log_replay,
    log_retry,
    retry_delay,
    went_away,
)
from rerank_kit.errors import (
    APIConnectionError,
    APIError,
    ConfigError,
    ConnectionClosedError,
    ModelNotServedError,
    NotFoundError,
)


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
    which model each serves (see :class:`Discovery`); a call's choice can be limited to its model's.

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
        self.replays = 0  # requests sent again after their connection closed unanswered; see RetryLoop.failed
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

    def count_replay(self) -> None:
        with self._lock:
            self.replays += 1

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
        self._replayed = False

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
        The first :class:`ConnectionClosedError` of a request is sent again at once, retries off or not.
        """
        if (
            isinstance(error, ConnectionClosedError)
            and not self._replayed
            and self.call.remaining() >= MIN_ATTEMPT_TIME
        ):
            self._replayed = True
            self.replicas.release(replica, ok=None)  # a closed kept-alive connection is no fault of the server's
            self.call.failed(error)
            self.replicas.count_replay()
            log_replay(self.method, replica.url + self.path, error)
            return 0.0
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


# --- routing by model ---------------------------------------------------------------------------------


class Route(NamedTuple):
    """Where a call goes: the model name it sends and the replicas that serve it (None: any replica)."""

    model: str
    replicas: tuple[Replica, ...] | None


class Discovery:
    """Which replicas serve one call's model, from the replicas' /v1/models: asked once, on first use,
    and again for a replica that went away (once its cool-down is over) or answered that it does not
    serve a model it listed.

    No model named: the model the replicas serve, when they all serve the same one by default;
    several: a ConfigError that lists them. A model no replica serves: :class:`ModelNotServedError`.
    Both clients drive it the same way, asking with a lock held so that concurrent calls ask once::

        discovery = Discovery(replicas, model, call, rng)
        route = discovery.cached()                    # the table's answer, no I/O: the usual case
        while route is None:
            for replica in discovery.to_ask():        # concurrently: GET /v1/models
                discovery.answered(replica, names or error)
            route = discovery.known()                 # raises when the answer is final
            if route is None: sleep(discovery.wait())   # raises when the retries or time are spent
    """

    def __init__(self, replicas: Replicas, model: str | None, call: Call, rng: random.Random) -> None:
        self.replicas = replicas
        self.model = model
        self.call = call
        self.rng = rng
        self.attempt = 0
        self.last_error: APIError | None = None  # the last failure asking a replica, in this call

    def cached(self) -> Route | None:
        """The table's route, unless a replica not known yet is due to be asked (then None)."""
        return None if self.replicas.recheck_due() else self.known()

    def known(self) -> Route | None:
        """The route from what is known, or None while it depends on replicas not asked yet.

        Raises ConfigError when no model was named and the replicas serve several, and
        ModelNotServedError when every replica is known and none serves the model.
        """
        table = self.replicas.table
        model = self.model
        if model is None:
            if len(table.defaults) > 1:
                served = "; ".join(f"{name} at {', '.join(urls)}" for name, urls in self.replicas.served().items())
                raise ConfigError(
                    f"the servers serve several models ({served}): pass model= to choose one (or set RERANK_KIT_MODEL)"
                )
            if not table.defaults:
                if table.unknown:
                    return None
                raise APIError(f"the servers list no models at {MODELS_PATH}")
            model = table.defaults[0]
        found = table.serving.get(model)
        if found:
            return Route(model, found)
        if table.unknown:
            return None
        raise ModelNotServedError(model, self.replicas.served(), self._unreachable())

    def to_ask(self) -> list[Replica]:
        """Replicas to ask now: those not known yet whose cool-down is over (a replica that failed is
        asked again after it, like any replica; it may come back serving another model)."""
        now = time.monotonic()
        return [r for r in self.replicas.table.unknown if r.down_until <= now]

    def ask_timeout(self) -> float:
        """Seconds to wait for one /v1/models answer: a live server answers at once."""
        return max(0.0, min(MODELS_TIMEOUT, self.call.timeout, self.call.remaining()))

    def answered(self, replica: Replica, answer: Sequence[str] | APIError) -> None:
        """Record ``replica``'s /v1/models: its model names, or the error asking it ended with.

        An error that asking again cannot fix (a wrong key, no /v1/models) is raised; the others cool
        the replica down, and :meth:`wait` says when to ask again.
        """
        self.call.record(replica.url)
        if not isinstance(answer, APIError):
            self.replicas.learn(replica, answer)
            return
        if isinstance(answer, NotFoundError):
            raise APIError(
                f"{replica.url}{MODELS_PATH} answered 404, so the client cannot tell which model {replica.url} "
                "serves: give the client the URLs of vLLM servers (or the one URL of a gateway in front of them)"
            ) from answer
        if not answer.retryable:
            raise answer
        self.last_error = answer
        self.call.failed(answer)
        self.replicas.forget(replica, answer, cool_down=True)

    def wait(self) -> float:
        """Seconds to wait before asking again: the backoff after the last failure (or its
        Retry-After), and at least until a replica not known yet is due.

        Raises when the call's retries or time are spent (see :meth:`give_up`).
        """
        error = self.last_error
        if error is not None:
            delay = retry_delay(error, self.attempt, self.call.max_retries, failover=False, rng=self.rng)
        else:  # only replicas that failed in other calls are left, cooling down
            delay = 0.0 if self.attempt < self.call.max_retries else None
        unknown = self.replicas.table.unknown
        if delay is not None and unknown:
            delay = max(delay, min(r.down_until for r in unknown) - time.monotonic())
        if delay is None or self.call.remaining() - delay < MIN_ATTEMPT_TIME:
            raise self.give_up(out_of_time=delay is not None)
        if error is not None:
            where = f"{MODELS_PATH} of {', '.join(r.url for r in unknown)}"
            log_retry("GET", where, error, delay, self.attempt, self.call.max_retries)
        self.replicas.count_retry()
        self.attempt += 1
        return delay

    def give_up(self, *, out_of_time: bool) -> APIError:
        """The error that ends the call: ModelNotServedError when some replicas answered and none of
        them serves the model (naming those that could not be asked); otherwise the last failure, or
        the deadline's error when the time ran out."""
        if self.model is not None and self.replicas.served():
            return ModelNotServedError(self.model, self.replicas.served(), self._unreachable())
        if out_of_time:
            return self.call.exceeded(f"GET {MODELS_PATH}", "no server said which models it serves")
        if self.last_error is not None:
            return self.last_error
        reasons = "; ".join(f"{url} ({why})" for url, why in self._unreachable().items())
        return APIConnectionError(f"no server could be asked which models it serves: {reasons}")

    def _unreachable(self) -> dict[str, str]:
        return {r.url: r.error or "not asked yet" for r in self.replicas.table.unknown}
