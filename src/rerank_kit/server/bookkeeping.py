"""vLLM's bookkeeping per engine request, made cheaper in the API server without changing what it records.

Every pair of a scoring request is one engine request, and vLLM's API server does the same bookkeeping for each:
its parameters deep-copied, a random suffix for its id, a dozen Prometheus observations when it finishes. With the
prompts built per request (``server.prompts``, ``server.batching``) that is a measurable share of what is left per
pair (bench/RESULTS.md 11.7, the --breakdown table). Three replacements, each giving the same result:

- ``PoolingParams.clone``: vLLM's is ``deepcopy(self)``; here a shallow copy whose fields that are not immutable
  scalars are deep-copied (a msgspec struct's fields are its whole state, so it is the same copy);
- the id's random suffix: ``InputProcessor.assign_request_id`` calls ``random_uuid`` (a ``uuid4``: an
  ``os.urandom`` call and a UUID object per pair); here 64 bits of a per-process Mersenne Twister seeded from
  ``os.urandom`` (seeded again in a forked child): the same 16 hex digits, of which vLLM keeps 8;
- ``Histogram.observe`` on the histograms of vLLM's Prometheus stat logger: prometheus_client adds each value to the
  sum and walks the buckets in Python, under a lock each; here the value joins a queue, added up (the same sum, the
  same buckets) when the histogram is read or 4,096 are waiting (in multiprocess mode, where other processes read
  the values: ``bisect`` finds the same bucket), with exemplars left to prometheus_client. Only where
  prometheus_client's observe is the body this was verified on (``HISTOGRAM_OBSERVE``).

And ``cache_envs``: vLLM's own cache of its environment variables, which its API server leaves off.

The vLLM bodies are pinned (``server.compat`` rows ``plugin.pooling_params_clone``, ``plugin.assign_request_id``,
``plugin.random_uuid``); an unknown one is left to vLLM and said once. Installed by ``server.plugin``.
"""

from __future__ import annotations

import bisect
import collections
import copy
import enum
import functools
import logging
import math
import operator
import os
import random
import threading
from typing import Any

# prometheus_client's Histogram.observe as verified (0.26.0, the locked release: the sum, then the first bucket whose
# bound is >= amount)
HISTOGRAM_OBSERVE = "a488fe9e89de97d3"
# ... and what reads a histogram's values (Histogram._child_samples, through MetricWrapperBase._samples): where these
# are the bodies verified, observations can wait until a read
HISTOGRAM_READS = ("be57ecfc4867d77c", "48df6a2906c131e1")
MESSAGE = "rerank-kit: vLLM's bookkeeping per engine request made cheaper, the same results:"
_IMMUTABLE = (bool, int, float, complex, str, bytes, enum.Enum, type(None))

logger = logging.getLogger("vllm.rerank_kit")
_INSTALLED: list[str] = []  # what the last install() put in place
_SAID: list[bool] = []
_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def install(off: list[str]) -> list[str]:
    """Install each replacement whose vLLM (and prometheus_client) code is as verified; the names of those installed.
    Each one not installed adds its reason to ``off``."""
    installed = []
    for name, step in (("clone", _clone), ("request ids", _request_ids), ("histograms", _histograms)):
        try:
            reason = step()
        except ImportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            installed.append(name)
        else:
            off.append(f"vLLM's {name} as vLLM does them: {reason}")
    _INSTALLED[:] = installed
    return installed


def cache_envs() -> bool:
    """vLLM's environment variables read once from now on, in this process: ``vllm.envs.enable_envs_cache``, which
    vLLM's engine core and workers call once they have started. Its API server does not, so every ``envs.X`` there
    reads os.environ again (~1.5 µs; a few per pair: the id's suffix, each output's stats). For the API server once
    it serves (the first scoring request): the variables do not change after start-up, as vLLM's note requires."""
    from vllm import envs

    enable = getattr(envs, "enable_envs_cache", None)
    if enable is None:
        return False
    enable()
    return True


TENSORS_MESSAGE = "rerank-kit: the engine's small output tensors decoded with one copy (as vLLM decodes them)"


def fast_tensors(decoder: Any) -> bool:
    """The API server's decoder of the engine's outputs (``AsyncMPClient.decoder``) reads a tensor sent inline (a
    pair's score: 4 bytes) with one copy into a buffer of its own, where vLLM's makes a byte tensor, clones it and
    views it twice: the same values, dtype and shape, in memory the tensor owns (a ``bytearray`` instead of a torch
    allocation). Anything else (a tensor sent out of band, an empty one) goes to vLLM's own. Only on the body
    verified (compat row ``plugin.decode_tensor``), and only on this one decoder: the engine core's decoders (prompt
    embeddings it may move to a GPU) stay vLLM's."""
    import torch

    from rerank_kit.server.compat import pinned

    base = getattr(type(decoder), "_decode_tensor", None)
    if base is None or "_decode_tensor" in vars(decoder) or pinned("plugin.decode_tensor", base) is not None:
        return False
    own = base.__get__(decoder)

    def _decode_tensor(arr: Any) -> Any:
        dtype, shape, data = arr
        if isinstance(data, (bytes, memoryview)) and len(data):
            torch_dtype = getattr(torch, dtype)
            if isinstance(torch_dtype, torch.dtype):
                return torch.frombuffer(bytearray(data), dtype=torch_dtype).view(shape)
        return own(arr)

    decoder._decode_tensor = _decode_tensor
    return True


def _clone() -> str | None:
    from vllm.pooling_params import PoolingParams

    from rerank_kit.server.compat import pinned

    base = PoolingParams.clone
    if getattr(base, "rerank_kit", False):
        return None
    if (changed := pinned("plugin.pooling_params_clone", base)) is not None:
        return changed
    fields = getattr(PoolingParams, "__struct_fields__", None)
    config = getattr(PoolingParams, "__struct_config__", None)
    if fields is None or config is None or getattr(config, "dict", True):
        return "PoolingParams is not a msgspec struct without a __dict__"

    def clone(self: Any) -> Any:
        new = copy.copy(self)
        for name in fields:
            value = getattr(self, name)
            if not isinstance(value, _IMMUTABLE):
                setattr(new, name, copy.deepcopy(value))
        return new

    clone.__wrapped__ = base  # type: ignore[attr-defined]
    clone.rerank_kit = True  # type: ignore[attr-defined]
    PoolingParams.clone = clone
    return None


def _request_ids() -> str | None:
    from vllm.v1.engine import input_processor

    from rerank_kit.server.compat import pinned

    base = getattr(input_processor, "random_uuid", None)
    if getattr(base, "rerank_kit", False):
        return None
    assign = getattr(input_processor.InputProcessor, "assign_request_id", None)
    for key, obj in (("plugin.assign_request_id", assign), ("plugin.random_uuid", base)):
        if (changed := pinned(key, obj)) is not None:
            return changed

    @functools.wraps(base)  # vLLM's own behind __wrapped__, where a pin check reads it
    def random_uuid() -> str:
        """What vLLM's random_uuid returns (16 lowercase hex digits, 64 random bits), from ``_rng``."""
        return f"{_rng.getrandbits(64):016x}"

    random_uuid.rerank_kit = True  # type: ignore[attr-defined]
    input_processor.random_uuid = random_uuid
    return None


def _histograms() -> str | None:
    from prometheus_client.metrics import Histogram
    from vllm.v1.metrics import loggers

    from rerank_kit.server import fingerprint

    if (found := fingerprint.of_object(Histogram.observe)) != HISTOGRAM_OBSERVE:
        return f"prometheus_client's Histogram.observe is not the body verified ({found} != {HISTOGRAM_OBSERVE})"
    stat_logger = loggers.PrometheusStatLogger
    base = stat_logger.__init__
    if getattr(base, "rerank_kit", False):
        return None

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base(self, *args, **kwargs)
        if not _SAID:  # here, not at install: vLLM's logging is set up by the time its stat loggers are
            _SAID.append(True)
            logger.info("%s %s", MESSAGE, ", ".join(_INSTALLED))
        for value in list(vars(self).values()):
            for child in value.values() if isinstance(value, dict) else ():
                if isinstance(child, Histogram) and all(
                    hasattr(child, a) for a in ("_sum", "_buckets", "_upper_bounds")
                ):
                    child.observe = _observer(child)

    __init__.__wrapped__ = base  # type: ignore[attr-defined]
    __init__.rerank_kit = True  # type: ignore[attr-defined]
    stat_logger.__init__ = __init__
    return None


def _observer(child: Any) -> Any:
    """``child.observe``, the same samples for less: observations kept in a queue and added up when anything reads
    the histogram (``_child_samples``, what every collection calls) or ``FLUSH_AT`` are waiting (``_flusher``); the
    bucket found by bisection where another process reads the values (prometheus_client's multiprocess mode reads
    its files, not this object); prometheus_client's own observe for an exemplar."""
    from prometheus_client.values import MutexValue

    original, total, buckets, bounds = child.observe, child._sum, child._buckets, child._upper_bounds
    if _reads_verified() and type(total) is MutexValue and all(type(b) is MutexValue for b in buckets):
        return _deferred(child, original)

    def observe(amount: float, exemplar: Any = None) -> None:
        if exemplar:
            return original(amount, exemplar)
        total.inc(amount)
        if not math.isnan(amount):  # NaN is in no bucket: prometheus_client's `amount <= bound` holds for none
            buckets[bisect.bisect_left(bounds, amount)].inc(1)
        return None

    observe.__wrapped__ = original  # type: ignore[attr-defined]
    return observe


@functools.cache
def _reads_verified() -> bool:
    from prometheus_client.metrics import Histogram, MetricWrapperBase

    from rerank_kit.server import fingerprint

    found = (fingerprint.of_object(Histogram._child_samples), fingerprint.of_object(MetricWrapperBase._samples))
    return found == HISTOGRAM_READS


FLUSH_AT = 4096  # observations one histogram keeps before it adds them up (~32 KiB)


def _deferred(child: Any, original: Any) -> Any:
    """``observe`` as a queue append, and ``child._child_samples`` that first adds the queue up (``_flusher``)."""
    pending: collections.deque[float] = collections.deque()
    flush = _flusher(pending, child._sum, child._buckets, child._upper_bounds)
    samples = child._child_samples

    def observe(amount: float, exemplar: Any = None) -> None:
        if exemplar:  # in order: what came before, then this one as prometheus_client records it
            flush()
            return original(amount, exemplar)
        pending.append(amount)
        if len(pending) >= FLUSH_AT:
            flush()
        return None

    def _child_samples() -> Any:
        flush()
        return samples()

    child._child_samples = _child_samples
    observe.__wrapped__ = original  # type: ignore[attr-defined]
    return observe


def _flusher(pending: collections.deque[float], total: Any, buckets: list[Any], bounds: list[float]) -> Any:
    """What prometheus_client's observe does for each queued value, for all of them at once: the sum added value by
    value in their order (the same float), each bucket's count by one ``searchsorted`` (the first bound >= value,
    as its loop finds it; NaN in none). Thread-safe: values appended meanwhile wait for the next flush."""
    import numpy as np

    edges = np.asarray(bounds, dtype=np.float64)
    lock = threading.Lock()

    def flush() -> None:
        with lock:
            n = len(pending)
            if not n:
                return
            values = [pending.popleft() for _ in range(n)]
            total.set(functools.reduce(operator.add, values, total.get()))
            at = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left")
            counts = np.bincount(at, minlength=len(bounds) + 1)  # NaN sorts past +Inf: index len(bounds)
            for i in np.flatnonzero(counts[: len(bounds)]).tolist():
                buckets[i].inc(int(counts[i]))

    return flush
