"""A scoring request's pairs sent to vLLM's engine core in one message instead of one message per pair.

Every pair is one engine request, and vLLM's API server sends each to the engine core process on its own
(``AsyncMPClient.add_request_async``: a msgpack encoding and a ZeroMQ ``send_multipart``, ~10 µs of the API server's
CPU per message here, bench/RESULTS.md 11.8). The engine core takes one request per ADD message, but it also takes
utility calls: a method of the engine core named in the message, called with its arguments between engine steps.
This module adds one, ``EngineCoreProc.rerank_kit_add_requests``, which does for each request of a list what the
engine core's input thread does for an ADD message (``preprocess_add_request``, the same errors answered the same
way) and then what its busy loop does with it (``_handle_client_request``); and, in the API server, lets
``server.batching.pair_outputs`` collect a request's pairs as vLLM's ``add_request`` hands them to the client
(everything else ``add_request`` does still happens per pair, in vLLM's code) and send them in one utility call.

Only where the vLLM bodies involved are the ones this was verified on (``server.compat`` rows
``plugin.core_client_add_request``, ``plugin.engine_input_add`` and ``plugin.engine_client_request``), for the
single-engine client (``AsyncMPClient`` itself: no data parallelism), and for text requests (no multimodal
features or prompt embeddings); anything else is sent as vLLM sends it. Should the utility call fail before any
request was added (a method the engine does not have, a payload it cannot decode), the pairs are sent one by one.
Installed by ``server.plugin`` in every process of the server (the engine core needs the method, the API server the
client side).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("vllm.rerank_kit")
METHOD = "rerank_kit_add_requests"
MESSAGE = "rerank-kit: a scoring request's pairs sent to the engine core in one message (not one per pair)"
FALLBACK_MESSAGE = (
    "rerank-kit: the engine core refused a request's pairs in one message (%s): sent one by one from now on"
)
# the pairs of the request being handed to the engine (pair_outputs), None elsewhere
_BATCH: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("rerank_kit_batch", default=None)
_STATE: dict[str, Any] = {"on": False, "said": False}


def install(off: list[str]) -> bool:
    """The engine core's method and the API server's collecting client, where every body involved is as verified."""
    try:
        from vllm.v1.engine import core, core_client
    except ImportError as exc:
        off.append(f"pairs sent to the engine core one message each ({exc})")
        return False
    client = core_client.AsyncMPClient
    base = client.add_request_async
    if getattr(base, "rerank_kit", False):
        return True
    if changed := unverified():
        off.extend(f"pairs sent to the engine core one message each: {c}" for c in changed)
        return False
    core.EngineCoreProc.rerank_kit_add_requests = _engine_method(core)  # type: ignore[attr-defined]

    @functools.wraps(base)  # vLLM's own behind __wrapped__, where a pin check reads it
    async def add_request_async(self: Any, request: Any) -> None:
        batch = _BATCH.get()
        if batch is None or type(self) is not client or request.mm_features or request.prompt_embeds is not None:
            return await base(self, request)
        request.client_index = self.client_index  # what vLLM's does before it sends
        batch.append(request)

    add_request_async.rerank_kit = True  # type: ignore[attr-defined]
    client.add_request_async = add_request_async
    _STATE["on"] = True
    return True


def unverified() -> list[str]:
    """Why the installed vLLM's bodies involved are not the ones this was verified on (empty: they are)."""
    from vllm.v1.engine import core, core_client

    from rerank_kit.server.compat import pinned

    checks = (
        ("plugin.core_client_add_request", core_client.AsyncMPClient.add_request_async),
        ("plugin.engine_input_add", getattr(core.EngineCoreProc, "process_input_sockets", None)),
        ("plugin.engine_client_request", getattr(core.EngineCoreProc, "_handle_client_request", None)),
    )
    return [c for key, obj in checks if (c := pinned(key, obj)) is not None]


@contextlib.contextmanager
def collecting(engine: Any) -> Iterator[list[Any] | None]:
    """Within: the requests vLLM's ``add_request`` would send to ``engine``'s core, collected in the list yielded
    (None: sent as vLLM sends them). Only this task's: another task's requests are sent as they come."""
    if not _STATE["on"]:
        yield None
        return
    batch: list[Any] = []
    token = _BATCH.set(batch)
    try:
        yield batch
    finally:
        _BATCH.reset(token)


async def send(engine: Any, batch: list[Any] | None) -> None:
    """The collected requests to the engine core: one utility call, or one by one where that is refused."""
    if not batch:
        return
    client = engine.engine_core
    if _STATE["on"] and len(payload := client.encoder.encode(batch)) == 1:  # no tensor out of band: one buffer
        try:
            added = await client.call_utility_async(METHOD, payload[0])
        except Exception as exc:
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(exc, EngineDeadError):
                raise
            _STATE["on"] = False  # the engine core cannot take them: nothing was added, so send them as vLLM does
            logger.warning(FALLBACK_MESSAGE, f"{type(exc).__name__}: {exc}")
        else:
            if added != len(batch):
                raise RuntimeError(f"the engine core took {added} of {len(batch)} requests")
            if not _STATE["said"]:
                _STATE["said"] = True
                logger.info(MESSAGE)
            return
    base = type(client).add_request_async.__wrapped__
    for request in batch:
        await base(client, request)


def _engine_method(core: Any) -> Any:
    """``EngineCoreProc.rerank_kit_add_requests``: what the engine core's input thread does for each ADD message
    (vLLM's ``process_input_sockets``: decode, ``preprocess_add_request``, its errors answered as there), then what
    its busy loop does with the request (``_handle_client_request``). Runs on the busy loop's thread, between steps,
    as every utility call does. Returns how many requests it took (all of them: a request that fails is answered
    with vLLM's error output for it, as an ADD message's would be)."""
    from vllm.v1.engine import EngineCoreRequest, EngineCoreRequestType
    from vllm.v1.serial_utils import MsgpackDecoder

    decoder = MsgpackDecoder(list[EngineCoreRequest])
    cache_miss = getattr(core, "MultiModalCacheMissError", None)  # 0.28+
    invalid = getattr(core, "VLLMValidationError", None)  # 0.33+: engine-side validation answered as such

    def rerank_kit_add_requests(self: Any, payload: bytes) -> int:
        requests = decoder.decode(payload)
        for req in requests:
            try:
                request = self.preprocess_add_request(req)
            except Exception as exc:
                if cache_miss is not None and isinstance(exc, cache_miss):
                    self._handle_mm_cache_miss(req, exc)
                elif (
                    invalid is not None
                    and isinstance(exc, invalid)
                    and hasattr(self, "_handle_request_validation_error")
                ):
                    self._handle_request_validation_error(req, exc)
                else:
                    self._handle_request_preproc_error(req)
                continue
            try:
                self._handle_client_request(EngineCoreRequestType.ADD, request)
            except Exception:  # in vLLM's busy loop this would end the engine; here the pair fails, as above
                self._handle_request_preproc_error(req)
        return len(requests)

    return rerank_kit_add_requests
