"""rerank-kit: serve cross-encoder rerankers correctly and fast on vLLM; call and benchmark them.

Three rooms, one per audience, none loading another's code: ``rerank_kit.client`` (a RAG application),
``rerank_kit.server`` (inside every vLLM server: the plugin and the guard) and ``rerank_kit.launcher``
(the operator's tools; ``rerank_kit.cli`` is their typer front end).

The public names below are imported on first use (PEP 562), so ``import rerank_kit.server.plugin`` loads
no client code and no httpx, and importing this package never imports typer, torch or vllm.

    >>> import rerank_kit
    >>> rerank_kit.get_recipe("BAAI/bge-reranker-base").family
    'bge-reranker'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_ERRORS = (
    "APIConnectionError APIError APIStatusError APITimeoutError AuthenticationError BadRequestError ConfigError "
    "ConnectionClosedError "
    "DocumentsTruncatedWarning "
    "InstructionNotSupportedError InternalServerError InvalidInputError ModelNotServedError NotFoundError "
    "RateLimitError RequestTooLargeError RerankKitError ServeError ServerStartError UnknownModelError "
    "UnprocessableEntityError"
).split()
_WHERE = {
    "AsyncRerankClient": "rerank_kit.client",
    "RerankClient": "rerank_kit.client",
    "ImageDocument": "rerank_kit.client",
    **dict.fromkeys(_ERRORS, "rerank_kit.errors"),
    **dict.fromkeys(("FAMILIES", "RECIPES", "Recipe", "get_recipe"), "rerank_kit.recipes"),
    **dict.fromkeys(("HealthStatus", "RerankResponse", "RerankResult", "ScoreResponse", "Usage"), "rerank_kit.types"),
}

__all__ = [
    "FAMILIES",
    "RECIPES",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncRerankClient",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConnectionClosedError",
    "DocumentsTruncatedWarning",
    "HealthStatus",
    "ImageDocument",
    "InstructionNotSupportedError",
    "InternalServerError",
    "InvalidInputError",
    "ModelNotServedError",
    "NotFoundError",
    "RateLimitError",
    "Recipe",
    "RequestTooLargeError",
    "RerankClient",
    "RerankKitError",
    "RerankResponse",
    "RerankResult",
    "ScoreResponse",
    "ServeError",
    "ServerStartError",
    "UnknownModelError",
    "UnprocessableEntityError",
    "Usage",
    "get_recipe",
]

if TYPE_CHECKING:
    from rerank_kit.client import AsyncRerankClient, ImageDocument, RerankClient
    from rerank_kit.errors import (
        APIConnectionError,
        APIError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        ConfigError,
        ConnectionClosedError,
        DocumentsTruncatedWarning,
        InstructionNotSupportedError,
        InternalServerError,
        InvalidInputError,
        ModelNotServedError,
        NotFoundError,
        RateLimitError,
        RequestTooLargeError,
        RerankKitError,
        ServeError,
        ServerStartError,
        UnknownModelError,
        UnprocessableEntityError,
    )
    from rerank_kit.recipes import FAMILIES, RECIPES, Recipe, get_recipe
    from rerank_kit.types import HealthStatus, RerankResponse, RerankResult, ScoreResponse, Usage


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rerank_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
