"""CPU time per call of named functions inside a vLLM API server (bench/frontend_cost.py --breakdown).

Put on the server's PYTHONPATH with RERANK_KIT_BENCH_PROBE=FILE set, Python imports this module at start-up in every
process of the server. A thread wraps each function of TARGETS once its module is imported (the class attribute or
module global replaced by a wrapper that adds the calling thread's CPU time, ``time.thread_time``, and a count), and
another appends the running totals to FILE.<pid> every second, with the wall clock, as JSON lines. Only synchronous
functions are wrapped: an async one's time would include what other tasks did while it waited. A name bound
elsewhere by ``from module import name`` before the wrap keeps the unwrapped function (its count stays 0).

A bench tool, never installed: rerank-kit's own server code does not import it.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import os
import sys
import threading
import time

# (module, class or None for a module-level function, function)
TARGETS = (
    ("vllm.v1.engine.input_processor", "InputProcessor", "process_inputs"),
    ("vllm.v1.engine.input_processor", "InputProcessor", "assign_request_id"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "add_request"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "process_outputs"),
    ("vllm.v1.serial_utils", "MsgpackEncoder", "encode"),
    ("vllm.v1.serial_utils", "MsgpackDecoder", "decode"),
    ("vllm.v1.engine.core_client", "AsyncMPClient", "_send_input_message"),
    ("vllm.v1.metrics.loggers", "StatLoggerManager", "record"),
    ("vllm.v1.metrics.loggers", "PrometheusStatLogger", "record"),
    ("vllm.v1.metrics.loggers", "LoggingStatLogger", "record"),
    ("vllm.v1.engine.input_processor", "InputProcessor", "_validate_params"),
    ("vllm.v1.engine.input_processor", "InputProcessor", "_validate_model_inputs"),
    ("vllm.pooling_params", "PoolingParams", "clone"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "_update_stats_from_output"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "_update_stats_from_finished"),
    ("vllm.v1.engine.output_processor", "RequestState", "make_request_output"),
    ("vllm.v1.serial_utils", "MsgpackDecoder", "_decode_tensor"),
    ("vllm.entrypoints.pooling.scoring.serving", "ServingScores", "_build_response"),
    ("vllm.entrypoints.pooling.scoring.io_processor", "CrossEncoderIOProcessor", "get_request_factory_online"),
    ("vllm.entrypoints.serve.engine.serving", "BaseServing", "_log_inputs"),
    ("prometheus_fastapi_instrumentator.routing", None, "get_route_name"),
    ("rerank_kit.server.prompts", None, "pair_prompts"),
    ("rerank_kit.server.prompts", None, "template_prompts"),
    ("rerank_kit.server.prompts", None, "_ids"),
    ("rerank_kit.server.bodycheck", None, "check_body"),
    ("rerank_kit.server.responses", None, "pair_scores"),
)
PATCH_SECONDS = 600  # modules imported later than this after start-up are not looked for


def _wrap(totals: dict[str, list[float]], key: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = totals.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += time.thread_time() - started

    return wrapper


def _patch(totals: dict[str, list[float]]) -> None:
    done: set[str] = set()
    deadline = time.monotonic() + PATCH_SECONDS
    while len(done) < len(TARGETS) and time.monotonic() < deadline:
        for module, cls, name in TARGETS:
            key = f"{cls or module}.{name}"
            if key in done or module not in sys.modules:
                continue
            owner = getattr(sys.modules[module], cls, None) if cls else sys.modules[module]
            raw = None if owner is None else inspect.getattr_static(owner, name, None)
            if raw is None:  # the module is still being imported: its class or function is not there yet
                continue
            done.add(key)
            if isinstance(raw, (staticmethod, classmethod)):
                setattr(owner, name, type(raw)(_wrap(totals, key, raw.__func__)))
            elif callable(raw) and not inspect.iscoroutinefunction(raw):
                setattr(owner, name, _wrap(totals, key, raw))
        time.sleep(0.2)


def _time_gc(totals: dict[str, list[float]]) -> None:
    """The garbage collector's CPU time per generation, as "gc.collect (generation N)" entries."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
            return
        entry = totals.setdefault(f"gc.collect (generation {info['generation']})", [0, 0.0])
        entry[0] += 1
        entry[1] += time.thread_time() - started[0]

    gc.callbacks.append(callback)


def _dump(totals: dict[str, list[float]], path: str) -> None:
    while True:
        time.sleep(1.0)
        with open(path, "a") as f:
            snapshot = {key: list(entry) for key, entry in list(totals.items())}  # totals changes meanwhile
            f.write(json.dumps({"t": time.time(), "totals": snapshot}) + "\n")


if out := os.environ.get("RERANK_KIT_BENCH_PROBE"):
    _totals: dict[str, list[float]] = {}
    _time_gc(_totals)
    threading.Thread(target=_patch, args=(_totals,), daemon=True).start()
    threading.Thread(target=_dump, args=(_totals, f"{out}.{os.getpid()}"), daemon=True).start()
