"""Client defaults, and the client side's only reads of RERANK_KIT_* variables (named in ``rerank_kit._contract``).

Every number a client uses without being told (timeouts, retries, backoff, chunk size, cool-down,
connection pools) is a named constant here. Explicit arguments always win; a variable is read only
when its argument is missing, at the call, never at import:

    RERANK_KIT_URL           server URL, or several separated by commas (replicas, of one model or of
                             several: the client routes each call to the servers of its model)
    RERANK_KIT_API_KEY       bearer key for servers started with an API key
    RERANK_KIT_MODAL_KEY     Modal proxy-auth token id (sent as Modal-Key)
    RERANK_KIT_MODAL_SECRET  Modal proxy-auth token secret (sent as Modal-Secret)
    RERANK_KIT_MODEL         model name to send; without it the client asks /v1/models once (the one
                             model the servers serve; several are served: an error that lists them)
    RERANK_KIT_TIMEOUT       seconds to wait for one response
    RERANK_KIT_DEADLINE      seconds one call may take in all (every retry and backoff included)

    >>> split_urls(["http://a:1, http://b:2", " http://c:3 "])
    ['http://a:1', 'http://b:2', 'http://c:3']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rerank_kit._contract import (  # noqa: F401 - the paths are re-exported for the client's modules
    API_KEY_ENV,
    CHUNKS_HEADER,
    DEADLINE_ENV,
    HEALTH_PATH,
    MODAL_KEY_ENV,
    MODAL_SECRET_ENV,
    MODEL_ENV,
    MODELS_PATH,
    RERANK_PATH,
    SCORE_PATH,
    TIMEOUT_ENV,
    URL_ENV,
    VERSION_PATH,
    bearer_headers,
)
from rerank_kit.errors import ConfigError

# --- defaults (one place) ----------------------------------------------------------------------------

DEFAULT_TIMEOUT = 60.0  # seconds to wait for a response (a long list on a CPU server is slow)
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_HEALTH_TIMEOUT = 5.0  # seconds per request of health(): a live server answers at once
# Seconds to wait for one server's /v1/models when finding which model each URL serves (a live server
# answers at once); one that does not answer in time is asked again later.
MODELS_TIMEOUT = 5.0
# Retries with backoff reach ~60 s of waiting in total: long enough for a CPU server to restart.
DEFAULT_MAX_RETRIES = 8
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MAX_RETRY_AFTER = 60.0  # never sleep longer than this for one Retry-After
# The bound on one call, whatever the retries: without it 8 retries x 60 s could hang ~9 minutes.
# 120 s outlasts a server restart (50-70 s for a CPU server in tests/test_faults.py) with time left
# for the answer, or two answers as slow as DEFAULT_TIMEOUT (the second from another replica). A
# client given a longer timeout gets that as its default deadline instead (see resolve_config).
DEFAULT_DEADLINE = 120.0
# Less time left than this cannot fit a round trip and a forward pass: the call gives up instead of
# sending a request that can only time out.
MIN_ATTEMPT_TIME = 0.05
# Documents per HTTP request; longer lists are split, sent concurrently and merged.
DEFAULT_MAX_DOCS_PER_REQUEST = 100
DEFAULT_MAX_CONCURRENCY = 8  # chunks of one call in flight at once
REPLICA_COOLDOWN = 5.0  # seconds a replica that failed is skipped

# Connection pools. The async client spreads its connections over lanes of LANE_WIDTH (see _lanes.py).
MAX_CONNECTIONS = 256
MAX_KEEPALIVE_CONNECTIONS = 64  # the sync client's one pool
LANE_WIDTH = 8
MAX_LANES = MAX_CONNECTIONS // LANE_WIDTH


# --- environment ---------------------------------------------------------------------------------------


def _env(name: str) -> str | None:
    """``name``'s value; unset and empty both mean "not given"."""
    value = os.environ.get(name)
    return value if value else None


def split_urls(value: str | Sequence[str] | None) -> list[str]:
    """Server URLs from one comma-separated string, or from several (a repeated ``--url``), each
    stripped; empty items dropped. None gives [].

        >>> split_urls("http://a:1,, http://b:2 ")
        ['http://a:1', 'http://b:2']
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    return [url.strip() for item in items if item for url in item.split(",") if url.strip()]


def urls_or_env(urls: str | Sequence[str] | None = None) -> list[str]:
    """``urls`` split (see :func:`split_urls`) when given; when None or empty, $RERANK_KIT_URL split.

    [] when neither names a server: the caller says what to pass.

        >>> urls_or_env(["http://a:1,http://b:2"])
        ['http://a:1', 'http://b:2']
    """
    if urls:
        return split_urls(urls)
    return split_urls(_env(URL_ENV))  # RERANK_KIT_URL: server URL(s), comma-separated


def seconds(name: str, value: float | None, env: str | None = None, default: float | None = None) -> float:
    """A duration: ``value`` when given, else the variable ``env`` (read only then), else ``default``.
    It must be a number > 0; ``float("inf")`` means no bound.

        >>> seconds("deadline", None, "RERANK_KIT_NO_SUCH_VARIABLE", 120.0)
        120.0
    """
    if value is None:
        text = _env(env) if env else None
        value = default if text is None else _number(env, text)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number of seconds > 0, not {value!r}")
    return float(value)


def _number(env: str | None, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{env}={text!r} is not a number of seconds") from None


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client was configured with, resolved (see :func:`resolve_config`)."""

    base_urls: tuple[str, ...]
    api_key: str | None = None
    modal_key: str | None = None
    modal_secret: str | None = None
    model: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    max_retries: int = DEFAULT_MAX_RETRIES
    max_docs_per_request: int = DEFAULT_MAX_DOCS_PER_REQUEST
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    cooldown: float = REPLICA_COOLDOWN
    headers: Mapping[str, str] = field(default_factory=dict)
    whole_lists: bool | None = None  # None: as the recipe of the model's name says (a listwise model: True)

    def request_headers(self) -> dict[str, str]:
        headers = {"User-Agent": "rerank-kit", **self.headers}
        headers.update(bearer_headers(self.api_key))
        if self.modal_key and self.modal_secret:
            # Modal's proxy auth for endpoints deployed with requires_proxy_auth / app.server.
            headers["Modal-Key"] = self.modal_key
            headers["Modal-Secret"] = self.modal_secret
        return headers


def resolve_config(
    base_url: str | Sequence[str] | None = None,
    *,
    api_key: str | None = None,
    modal_key: str | None = None,
    modal_secret: str | None = None,
    model: str | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    max_retries: int | None = None,
    max_docs_per_request: int | None = None,
    max_concurrency: int | None = None,
    cooldown: float | None = None,
    headers: Mapping[str, str] | None = None,
    whole_lists: bool | None = None,
) -> ClientConfig:
    """Explicit arguments first; each RERANK_KIT_* variable is read only when its argument is None.

    >>> resolve_config("http://127.0.0.1:8000/v1/", api_key="k").base_urls
    ('http://127.0.0.1:8000',)
    """
    url_list = urls_or_env() if base_url is None else split_urls(base_url)
    if not url_list:
        if base_url is None:
            raise ConfigError("no server URL: pass base_url=... (or --url), or set RERANK_KIT_URL")
        raise ConfigError("base_url is empty: pass at least one server URL")
    for url in url_list:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {url!r} must start with http:// or https://")
    if max_retries is not None and max_retries < 0:
        raise ConfigError("max_retries must be >= 0")
    if max_docs_per_request is not None and max_docs_per_request < 1:
        raise ConfigError("max_docs_per_request must be >= 1")
    # RERANK_KIT_TIMEOUT: seconds to wait for one response.
    request_timeout = seconds("timeout", timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT)
    return ClientConfig(
        base_urls=tuple(u.rstrip("/").removesuffix("/v1") for u in url_list),
        # RERANK_KIT_API_KEY: bearer key for servers started with an API key.
        api_key=api_key if api_key is not None else _env(API_KEY_ENV),
        # RERANK_KIT_MODAL_KEY / RERANK_KIT_MODAL_SECRET: Modal proxy-auth token (Modal-Key/Modal-Secret).
        modal_key=modal_key if modal_key is not None else _env(MODAL_KEY_ENV),
        modal_secret=modal_secret if modal_secret is not None else _env(MODAL_SECRET_ENV),
        # RERANK_KIT_MODEL: model name to send; without it the client asks /v1/models once.
        model=model if model is not None else _env(MODEL_ENV),
        timeout=request_timeout,
        # RERANK_KIT_DEADLINE: seconds one call may take in all, retries and backoff included. A
        # timeout longer than the default deadline raises it: one full-length attempt always fits.
        deadline=seconds("deadline", deadline, DEADLINE_ENV, max(DEFAULT_DEADLINE, request_timeout)),
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        max_docs_per_request=max_docs_per_request or DEFAULT_MAX_DOCS_PER_REQUEST,
        max_concurrency=max_concurrency or DEFAULT_MAX_CONCURRENCY,
        cooldown=REPLICA_COOLDOWN if cooldown is None else cooldown,
        headers=dict(headers or {}),
        whole_lists=whole_lists,
    )
