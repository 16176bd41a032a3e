"""A scoring request's pairs rendered at once: vLLM's ``ServingScores._preprocessing`` replaced by one that hands
every pair of a request to the IO processor in one call (``rerank_kit_render_all``, set by the plugin's cross-encoder
IO processor), instead of one task, future and thread-pool hop per pair. Installed by ``server.plugin``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from rerank_kit.server import bookkeeping, engine_batch

# A child of vLLM's logger, so messages appear in the server log with its formatting.
logger = logging.getLogger("vllm.rerank_kit")
HANDOFF_MESSAGE = "rerank-kit: a scoring request's pairs handed to the engine at once (no generator or task per pair)"
ENVS_MESSAGE = "rerank-kit: vLLM's environment variables cached now that the server serves (as its engine core does)"


def install(off: list[str]) -> bool:
    """Let vLLM's scoring endpoints hand a request's pairs to the IO processor at once (``_render_all``).

    vLLM renders a scoring request as one task per pair (``asyncio.gather`` of ``render_async``); with
    100 documents that is 100 tasks, futures and thread-pool hops for work the plugin does in one call.
    ServingScores._preprocessing is replaced by one that asks an IO processor with ``rerank_kit_render_all``
    for every pair at once and keeps vLLM's own code for any other. Where this vLLM's ``_preprocessing`` is not
    the body it was verified on, nothing is replaced and ``off`` gets the reason.
    """
    from rerank_kit.server.compat import accepts, pinned

    try:
        from vllm.entrypoints.pooling.scoring.serving import ServingScores
    except ImportError:
        return False
    base = getattr(ServingScores, "_preprocessing", None)
    if getattr(base, "rerank_kit", False):
        return True
    if not accepts("plugin.scoring_preprocessing", base):
        return False
    if (changed := pinned("plugin.scoring_preprocessing", base)) is not None:
        off.append(changed)
        return False

    async def _preprocessing(self: Any, io_processor: Any, ctx: Any) -> None:
        render_all = getattr(io_processor, "rerank_kit_render_all", None)
        if render_all is None:
            return await base(self, io_processor, ctx)
        requests = io_processor.get_request_factory_online(ctx)
        if len(requests) == 0:
            raise ValueError("You must pass at least one prompt")  # vLLM's own message
        ctx.engine_inputs = await render_all(requests)

    _preprocessing.rerank_kit = True  # type: ignore[attr-defined]
    ServingScores._preprocessing = _preprocessing
    return True


# AsyncLLM.encode bodies this re-implements -> the errors each passes on untouched (the rest: EngineGenerateError)
_PASSED_ON = {
    "fe27df5a87cad68f": ("VLLMClientError",),  # 0.27.1-0.28.0
    "bb49b9752d9558ce": ("VLLMClientError", "GracefulHTTPError"),  # 0.29.0-0.32.0
    "27b1c6443e0dda96": ("VLLMClientError", "GracefulHTTPError", "GenerationError"),  # 0.33.0-0.34.0
}


def install_handoff(off: list[str]) -> bool:
    """Hand a scoring request's pairs to the engine with no async generator or task per pair.

    vLLM's ``_prepare_generators`` makes one ``AsyncLLM.encode`` generator per pair and merges them
    (``merge_async_iterators``): a task per pair for its first output and another for its end, and an
    ``asyncio.wait`` over every pending task each time one finishes (quadratic in the request's pairs).
    Here one generator adds every pair to the engine (``AsyncLLM.add_request``, what ``encode`` calls) and
    reads each pair's output queue in turn, with ``encode``'s error handling: a pair the engine refuses
    raises what ``encode`` raises, and every pair still in the engine is aborted when the request fails or
    is cancelled. Only for the scoring IO processors the plugin wrapped, and only where
    ``_prepare_generators`` and ``AsyncLLM.encode`` are bodies it was verified on.
    """
    from rerank_kit.server import fingerprint
    from rerank_kit.server.compat import accepts, pinned

    try:
        from vllm.entrypoints.pooling.scoring.serving import ServingScores
        from vllm.v1.engine import async_llm
    except ImportError:
        return False
    base = getattr(ServingScores, "_prepare_generators", None)
    if getattr(base, "rerank_kit", False):
        return True
    encode = getattr(async_llm.AsyncLLM, "encode", None)
    add_request = getattr(async_llm.AsyncLLM, "add_request", None)
    if not all(
        accepts(key, obj)
        for key, obj in (("plugin.prepare_generators", base), ("plugin.async_llm_encode", encode),
                         ("plugin.async_llm_add_request", add_request))
    ):  # fmt: skip
        off.append("pairs handed to the engine one generator each (AsyncLLM.add_request as in vLLM >= 0.27)")
        return False
    if changed := [c for c in (pinned("plugin.prepare_generators", base), pinned("plugin.async_llm_encode", encode))
                   if c is not None]:  # fmt: skip
        off.extend(f"pairs handed to the engine at once: {c}" for c in changed)
        return False
    names = _PASSED_ON.get(fingerprint.of_object(encode), ())
    passed_on = tuple(e for e in (getattr(async_llm, n, None) for n in names) if isinstance(e, type))
    if len(passed_on) != len(names):
        off.append(f"pairs handed to the engine at once: vllm.v1.engine.async_llm lacks one of {names}")
        return False
    errors = EncodeErrors(async_llm.EngineDeadError, passed_on, async_llm.EngineGenerateError)
    said: list[bool] = []

    async def _prepare_generators(self: Any, ctx: Any) -> None:
        engine = self.engine_client
        if not getattr(self.io_processor, "rerank_kit", False) or not isinstance(engine, async_llm.AsyncLLM):
            return await base(self, ctx)
        if ctx.engine_inputs is None:
            raise ValueError("Engine inputs not available")  # vLLM's own message
        trace_headers = None if ctx.raw_request is None else await self._get_trace_headers(ctx.raw_request.headers)
        assert ctx.pooling_params is not None
        ctx.pooling_params.verify(self.model_config)
        ids = [f"{ctx.request_id}-{i}" if ctx.prompt_request_ids is None else ctx.prompt_request_ids[i]
               for i in range(len(ctx.engine_inputs))]  # fmt: skip
        for request_id, engine_input in zip(ids, ctx.engine_inputs, strict=True):
            self._log_inputs(request_id, engine_input["prompts"], params=engine_input["params"],
                             lora_request=ctx.lora_request)  # fmt: skip
        if not said:
            said.append(True)
            logger.info(HANDOFF_MESSAGE)
            if bookkeeping.cache_envs():  # the server has started: vLLM's variables are read once from now on
                logger.info(ENVS_MESSAGE)
            if bookkeeping.fast_tensors(getattr(engine.engine_core, "decoder", None)):
                logger.info(bookkeeping.TENSORS_MESSAGE)
        ctx.result_generator = pair_outputs(engine, ids, ctx.engine_inputs, trace_headers, errors)

    _prepare_generators.rerank_kit = True  # type: ignore[attr-defined]
    ServingScores._prepare_generators = _prepare_generators
    return True


@dataclass(frozen=True)
class EncodeErrors:
    """How ``AsyncLLM.encode`` treats an error: the engine's death and ``passed_on`` raised as they are, anything
    else as ``generate_error`` (from it)."""

    engine_dead: type[BaseException]
    passed_on: tuple[type[BaseException], ...]
    generate_error: type[BaseException]


async def pair_outputs(
    engine: Any, request_ids: list[str], engine_inputs: list[Any], trace_headers: Any, errors: EncodeErrors
) -> AsyncGenerator[tuple[int, Any], None]:
    """(pair index, output) for every pair of a request: each added to the engine (``add_request``, as ``encode``
    does; sent to the engine core in one message where ``server.engine_batch`` can), then each pair's output queue
    read in turn. On an error, a cancellation or an early close, every pair not read to its end is aborted in the
    engine, in one call (a pair collected but not yet sent too: the engine core ignores an unknown id)."""
    queues: list[Any] = []
    done = 0  # pairs read to their last output
    try:
        with engine_batch.collecting(engine) as batch:  # vLLM's add_request per pair, their sending at once
            for request_id, engine_input in zip(request_ids, engine_inputs, strict=True):
                queues.append(
                    await engine.add_request(
                        request_id, engine_input["prompts"], engine_input["params"],
                        lora_request=engine_input["lora_requests"], trace_headers=trace_headers,
                        priority=engine_input["priorities"],
                    )
                )  # fmt: skip
        await engine_batch.send(engine, batch)
        for i, queue in enumerate(queues):
            finished = False
            while not finished:
                out = queue.get_nowait() or await queue.get()
                finished = out.finished
                done = i + 1 if finished else i
                yield i, out
    except errors.engine_dead:
        raise  # nothing to abort: the engine is gone
    except (asyncio.CancelledError, GeneratorExit, *errors.passed_on):
        await _abort(engine, queues[done:])
        raise
    except Exception as exc:
        await _abort(engine, queues[done:])
        raise errors.generate_error() from exc
    finally:
        for queue in queues:
            queue.close()


async def _abort(engine: Any, queues: list[Any]) -> None:
    if queues:
        await engine.abort([q.request_id for q in queues], internal=True)
        if getattr(engine, "log_requests", False):
            logger.info("Requests %s and %d more aborted.", queues[0].request_id, len(queues) - 1)
