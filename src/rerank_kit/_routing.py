"""Routing by model: which of a client's servers serve which model, found from their /v1/models.

A client given several URLs asks each server once, on first use, which models it serves (vLLM lists
its --served-model-name, else its --model), and sends each call to the servers of the call's model,
balancing and failing over among them as among any replicas (``_retry.Replicas``, ``RetryLoop``).
A server that went away, or that answers "model does not exist" for a model it listed (it was
switched), is asked again. No I/O here: the clients send the requests (``client.py``).

    >>> from rerank_kit._retry import Call, Replicas
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
import time
from collections.abc import Sequence
from typing import NamedTuple

from rerank_kit._config import MIN_ATTEMPT_TIME, MODELS_PATH, MODELS_TIMEOUT
from rerank_kit._retry import Call, Replica, Replicas, log_retry, retry_delay
from rerank_kit.errors import APIConnectionError, APIError, ConfigError, ModelNotServedError, NotFoundError


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
