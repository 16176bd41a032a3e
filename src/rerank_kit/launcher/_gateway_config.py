"""The gateway's Caddy configuration (JSON) for the backends behind it: a request goes to the servers of
the model its JSON body names, callers are checked for the key, /v1/models lists every backend's models.

Pure: no I/O. ``rerank_kit.launcher.gateway`` runs Caddy with it and loads it into the running one.

    >>> config = caddy_config([Backend(("m",), ("http://127.0.0.1:8000",))], host="127.0.0.1", port=8080,
    ...                       admin_socket=Path("/tmp/a.sock"), storage=Path("/tmp/caddy"), keyed=False)
    >>> config["apps"]["http"]["servers"]["rerank_kit"]["listen"]
    ['127.0.0.1:8080']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rerank_kit._contract import GATEWAY_KEY_ENV, HEALTH_PATH, MODELS_PATH
from rerank_kit.errors import ConfigError, ServeError

# The key reaches Caddy only through its environment: its configuration names the variable, never the
# key, so neither the config file nor the admin API's GET /config shows it.
KEY_ENV = GATEWAY_KEY_ENV


@dataclass(frozen=True)
class Backend:
    """One model's servers behind the gateway: the names it answers to (the first is the one its answers
    carry), its servers' URLs, and its /v1/models entries."""

    names: tuple[str, ...]
    urls: tuple[str, ...]
    models: tuple[dict[str, Any], ...] = ()


def _regex_literal(text: str) -> str:
    """``text`` as an RE2 (Caddy) pattern matching it as JSON writes it inside a string."""
    parts = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            parts.append(ch)
        elif ch == "/":
            parts.append(r"\\?/")  # JSON may escape a slash
        elif ch.isascii() and ch.isprintable() and ch != " ":
            parts.append("\\" + ch)  # RE2 and Python alike take any escaped punctuation literally
        elif ch.isascii():
            parts.append(rf"\x{ord(ch):02x}")  # a space or control character: \xHH means it in both
        elif ord(ch) > 0xFFFF:
            parts.append(ch)
        else:
            # raw in UTF-8, or \uXXXX as Python's json.dumps writes it by default
            parts.append(rf"(?:{ch}|\\u(?i:{ord(ch):04x}))")
    return "".join(parts)


def model_pattern(names: Iterable[str]) -> str:
    """An RE2 pattern matching a JSON body whose ``"model"`` is one of ``names``.

    A quote inside a JSON string is escaped (``\\"``), so document text that mentions "model" cannot match.

    >>> import re
    >>> p = re.compile(model_pattern(["org/m-1.5"]))
    >>> bool(p.search('{"query": "q", "model" : "org\\\\/m-1.5"}')), bool(p.search('{"model": "org/m-105"}'))
    (True, False)
    """
    alternatives = "|".join(_regex_literal(n) for n in names)
    return rf'"model"\s*:\s*"(?:{alternatives})"'


_ANY_MODEL = r'"model"\s*:\s*"'


def _cel_matches(pattern: str) -> str:
    # A CEL raw string needs no escapes; a quote character of its own cannot appear in it, so \x27 stands in.
    return "{http.request.body}.matches(r'" + pattern.replace("'", r"\x27") + "')"


def hostport(host: str, port: int) -> str:
    """ "host:port", with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dial(url: str) -> str:
    """ "host:port" of a server URL, as Caddy dials it and counts its requests."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ConfigError(f"server URL {url!r} has no host:port")
    return hostport(parts.hostname, parts.port)


def _json_response(status: int, body: Any) -> dict[str, Any]:
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": {"Content-Type": ["application/json"]},
        "body": json.dumps(body),
    }


def _error(status: int, kind: str, message: str) -> dict[str, Any]:
    # vLLM's error shape, so clients map it as they map vLLM's own (rerank_kit.errors.status_error).
    return _json_response(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})


def _proxy(urls: Sequence[str]) -> dict[str, Any]:
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial(u)} for u in urls],
        "load_balancing": {
            # Rerank requests differ a lot in cost: the server with the fewest in flight gets the next one.
            "selection_policy": {"policy": "least_conn"},
            # A server that refuses the connection (stopped, crashed) is skipped, and the request tried on
            # another for up to this long: nothing was sent yet, so trying again is safe.
            "try_duration": "5s",
            "try_interval": "250ms",
        },
        "health_checks": {"passive": {"fail_duration": "10s", "max_fails": 1}},
        "transport": {"protocol": "http", "dial_timeout": "5s"},
    }


def _route(match: dict[str, Any], handler: dict[str, Any]) -> dict[str, Any]:
    return {"match": [match], "handle": [handler], "terminal": True}


def routing_names(backends: Sequence[Backend]) -> list[tuple[str, ...]]:
    """The names each backend is routed by: a name goes to the backend whose own (first) name it is,
    else to the first backend that answers to it (an alias left by an earlier switch)."""
    primary = {b.names[0] for b in backends if b.names}
    claimed: set[str] = set()
    out = []
    for b in backends:
        mine = tuple(n for n in b.names if n not in claimed and (n == b.names[0] or n not in primary))
        claimed.update(mine)
        out.append(mine)
    return out


def caddy_config(
    backends: Sequence[Backend],
    *,
    host: str,
    port: int,
    admin_socket: Path,
    storage: Path,
    keyed: bool,
) -> dict[str, Any]:
    """The gateway's Caddy configuration (JSON) for ``backends``.

    Routes, first match wins: /health without a key (like vLLM's); then, when ``keyed``, 401 unless
    ``Authorization: Bearer $RERANK_KIT_GATEWAY_KEY``; /v1/models from the servers' own lists; a body
    naming one of a backend's models goes to that backend; a body naming another model is a 404 that
    lists the served ones; anything else (no model: GET /version, /metrics) goes to the first backend.
    """
    if not backends:
        raise ServeError("no server to put behind the gateway: start one with `rerank-kit up MODEL`")
    every_url = [u for b in backends for u in b.urls]
    names_by_backend = routing_names(backends)
    served = [n for names in names_by_backend for n in names]
    listed: dict[str, dict[str, Any]] = {}
    for b in backends:
        for entry in b.models or [{"id": n, "object": "model"} for n in b.names]:
            listed.setdefault(str(entry.get("id")), entry)
    not_served = f"no server behind this gateway serves that model; served: {', '.join(served)}"
    routes = [_route({"path": [HEALTH_PATH]}, _proxy(every_url))]
    if keyed:
        check = "{http.request.header.Authorization} == 'Bearer ' + {env.%s}" % KEY_ENV  # noqa: UP031 - CEL braces
        missing = "missing or wrong API key: send Authorization: Bearer KEY"
        routes.append(_route({"not": [{"expression": check}]}, _error(401, "AuthenticationError", missing)))
    routes.append(_route({"path": [MODELS_PATH]}, _json_response(200, {"object": "list", "data": [*listed.values()]})))
    routes += [
        _route({"expression": _cel_matches(model_pattern(names))}, _proxy(backend.urls))
        for backend, names in zip(backends, names_by_backend, strict=True)
        if names
    ]
    routes.append(_route({"expression": _cel_matches(_ANY_MODEL)}, _error(404, "NotFoundError", not_served)))
    routes.append({"handle": [_proxy(backends[0].urls)]})
    return {
        # persist: false keeps Caddy from copying the config to ~/.config/caddy/autosave.json.
        "admin": {"listen": f"unix/{admin_socket}|0600", "config": {"persist": False}},
        "storage": {"module": "file_system", "root": str(storage)},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {
            "http": {
                "servers": {
                    "rerank_kit": {
                        "listen": [hostport(host, port)],
                        "protocols": ["h1"],
                        "automatic_https": {"disable": True},
                        "routes": routes,
                    }
                }
            }
        },
    }
