"""A scoring request's pairs rendered at once: vLLM's ``ServingScores._preprocessing`` replaced by one that hands
every pair of a request to the IO processor in one call (``rerank_kit_render_all``, set by the plugin's cross-encoder
IO processor), instead of one task, future and thread-pool hop per pair. Installed by ``server.plugin``.
"""

from __future__ import annotations

from typing import Any


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
