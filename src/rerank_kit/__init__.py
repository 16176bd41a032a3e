"""rerank-kit: serve cross-encoder rerankers correctly and fast on vLLM; call and benchmark them.

Importing this package is cheap: it never imports typer, torch or vllm.
"""

from rerank_kit.client import AsyncRerankClient, RerankClient
from rerank_kit.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
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

__version__ = "0.1.0"

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
    "HealthStatus",
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
