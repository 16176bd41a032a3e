"""One GET of a server's /health, /v1/models or /version, with the bearer header built in one place
(``rerank_kit._contract.bearer_headers``): the clients (``health()``, which server serves which model),
the launcher (waiting for a start), the gateway (what each server serves) and the bench (what the server
says about itself) all probe servers through it. A client passes its own connection pool (``http``),
whose headers already carry its key.

    >>> healthy("http://127.0.0.1:9", timeout=0.5)  # nothing listens on the discard port
    False
"""

from __future__ import annotations

import httpx

from rerank_kit._contract import HEALTH_PATH, MODELS_PATH, bearer_headers

Timeout = float | httpx.Timeout


def probe(
    url: str, path: str, *, api_key: str | None = None, timeout: Timeout = 2.0, http: httpx.Client | None = None
) -> httpx.Response:
    """``GET url+path`` with ``api_key`` as the bearer key; raises ``httpx.HTTPError`` when there is no answer.

    Pass ``http`` to reuse one client across polls.
    """
    get = httpx.get if http is None else http.get
    return get(url.rstrip("/") + path, headers=bearer_headers(api_key), timeout=timeout)


async def probe_async(
    url: str, path: str, *, http: httpx.AsyncClient, api_key: str | None = None, timeout: Timeout = 2.0
) -> httpx.Response:
    """:func:`probe` through an asyncio client."""
    return await http.get(url.rstrip("/") + path, headers=bearer_headers(api_key), timeout=timeout)


def healthy(url: str, *, timeout: float = 2.0, http: httpx.Client | None = None) -> bool:
    """True when ``url``/health answers 200 within ``timeout`` seconds; any HTTP failure is False."""
    try:
        return probe(url, HEALTH_PATH, timeout=timeout, http=http).status_code == 200
    except httpx.HTTPError:
        return False


def served_models(url: str, *, api_key: str | None = None, timeout: float = 2.0) -> httpx.Response:
    """The answer of ``url``/v1/models (raises ``httpx.HTTPError`` when there is none)."""
    return probe(url, MODELS_PATH, api_key=api_key, timeout=timeout)


__all__ = ["healthy", "probe", "probe_async", "served_models"]
