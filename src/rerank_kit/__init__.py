"""rerank-kit: serve cross-encoder rerankers correctly and fast on vLLM; call and benchmark them.

Importing this package is cheap: it never imports typer, torch or vllm.
"""

from rerank_kit.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    InternalServerError,
    InvalidInputError,
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

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "RECIPES",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "InternalServerError",
    "InvalidInputError",
    "NotFoundError",
    "RateLimitError",
    "Recipe",
    "RequestTooLargeError",
    "RerankKitError",
    "ServeError",
    "ServerStartError",
    "UnknownModelError",
    "UnprocessableEntityError",
    "get_recipe",
]
