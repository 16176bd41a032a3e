"""`rerank-kit gateway` (one URL in front of the running servers) and `rerank-kit switch` (another model
behind it, without losing a request): options in, rerank_kit.launcher.gateway and rerank_kit.launcher.switch do
the work."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from rerank_kit import launcher
from rerank_kit.errors import ConfigError, ServeError
from rerank_kit.launcher import gateway as gw
from rerank_kit.launcher import switch as sw

from ._options import DtypeOpt, FamilyOpt, JsonOpt, MaxLenOpt, say, self_check

ApiKeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help=f"The key callers must send and the servers take (default: ${launcher.API_KEY_VARIABLE}).",
    ),
]


def _api_key(api_key_file: Path | None) -> str | None:
    """The key from ``api_key_file``, else $RERANK_KIT_API_KEY, else None."""
    if api_key_file is not None:
        try:
            key = api_key_file.expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {str(api_key_file)!r}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"API key file {str(api_key_file)!r} is empty")
        return key
    # RERANK_KIT_API_KEY: the key the gateway requires of callers and sends on to the servers.
    return os.environ.get(launcher.API_KEY_VARIABLE) or None


def gateway(
    host: Annotated[
        str, typer.Option(help="Interface to bind. 0.0.0.0 exposes the gateway to the network.")
    ] = launcher.DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = gw.DEFAULT_GATEWAY_PORT,
    api_key_file: ApiKeyFileOpt = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-local --host without an API key.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the running gateway.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a gateway (Caddy) in front of the running servers: one URL for every model, routed by the
    request's "model", for callers that are not Python. Prints its URL.

    Run it again after `up` or `down` to point it at the servers running now. Callers send the servers'
    key ($RERANK_KIT_API_KEY or --api-key-file); rerank, score, /v1/models and every other vLLM route pass.
    """
    if stop:
        record = gw.stop_gateway()
        say(f"Stopped the gateway at {record.url} (pid {record.pid})." if record else "No gateway is running.")
        return
    key = _api_key(api_key_file)
    backends = gw.discover_backends(
        launcher.list_servers(), api_key=key, on_skip=lambda r, why: say(f"  skipping {r.url} ({r.model}): {why}")
    )
    if not backends:
        raise ServeError("no healthy rerank-kit server to put behind the gateway: start one with `rerank-kit up MODEL`")
    started = time.monotonic()
    record = gw.running_gateway()
    if record is not None:
        if (host, port) != (record.host, record.port) or bool(key) != record.keyed:
            say(f"note: the gateway at {record.url} keeps its address and key; `--stop` it first to change them")
        gw.apply(record, backends)
        took = (time.monotonic() - started) * 1000
        say(f"Gateway at {record.url} now in front of the running servers (reconfigured in {took:.0f} ms):")
    else:
        caddy = gw.find_caddy()
        note = gw.version_note(gw.caddy_version(caddy))
        if note:
            say(f"warning: {note}")
        record = gw.start_gateway(backends, host=host, port=port, api_key=key, insecure=insecure, caddy=caddy)
        took = time.monotonic() - started
        say(f"Gateway (Caddy, pid {record.pid}) at {record.url}, up in {took:.1f} s; log: {record.log}")
    for backend, names in zip(backends, gw.routing_names(backends), strict=True):
        say(f"  {', '.join(names) or '(names served by another backend)'} -> {', '.join(backend.urls)}")
    if not record.keyed:
        say("  no API key: any caller on this machine may use it")
    if as_json:
        print(json.dumps({**record.__dict__, "backends": [b.__dict__ for b in backends]}, indent=2))
    else:
        print(record.url)


def switch(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(metavar="NEW_MODEL", help="The model to serve instead.")],
    family: FamilyOpt = None,
    replace: Annotated[
        str | None,
        typer.Option("--replace", metavar="MODEL", help="The model to replace (default: the one model running)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port of the new server (default: the first free one after the servers').")
    ] = None,
    replicas: Annotated[int, typer.Option(help="Servers for the new model.")] = 1,
    max_model_len: MaxLenOpt = None,
    dtype: DtypeOpt = None,
    eager: Annotated[bool, typer.Option("--eager", help="Skip torch.compile: faster start, slower serving.")] = False,
    kv_cache_gib: Annotated[
        float | None, typer.Option("--kv-cache-gib", help="CPU backend: memory for the KV cache, GiB.")
    ] = None,
    api_key_file: ApiKeyFileOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the new server's /health.")
    ] = launcher.DEFAULT_START_TIMEOUT,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="Seconds to wait for the old server's requests to finish.")
    ] = sw.DRAIN_TIMEOUT,
    no_self_check: Annotated[
        bool, typer.Option("--no-self-check", help="Skip the new server's start-up self-check.")
    ] = False,
) -> None:
    """Serve NEW_MODEL instead of the running one, behind the gateway, without losing a request.

    Starts NEW_MODEL beside the old server, waits for /health and the self-check, points the gateway at
    it, waits until the old server has answered what it was sent, and stops it. The new server answers to
    the old model's name too, so callers that send it keep working. Extra vLLM flags go after `--`.
    """
    record = gw.running_gateway()
    if record is None:
        raise ServeError("no gateway is running: start one with `rerank-kit gateway`, then switch")
    key = _api_key(api_key_file)
    old = _servers_to_replace(replace)
    options = launcher.ServeOptions(
        port=port if port is not None else _next_free_port(),
        max_model_len=max_model_len,
        dtype=dtype,
        eager=eager,
        kv_cache_gib=kv_cache_gib,
        api_key_file=str(api_key_file) if api_key_file else None,
        extra_args=tuple(a for a in ctx.args if a != "--"),
    )
    commands = launcher.commands_for(model, family, options, replicas=replicas)
    for note in commands[0].notes:
        say(f"warning: {note}")
    say(f"Switching {', '.join(sorted({r.model for r in old}))} -> {model} behind {record.url}")
    sw.switch(
        commands,
        old,
        gateway=record,
        api_key=key,
        check=None if no_self_check else self_check,
        start_timeout=timeout,
        drain_timeout=drain_timeout,
        say=say,
    )
    print(record.url)


def _servers_to_replace(model: str | None) -> list[launcher.ServerRecord]:
    running = [r for r in launcher.list_servers() if r.alive]
    models = sorted({r.model for r in running})
    if not running:
        raise ServeError("no rerank-kit server is running to switch from: start one with `rerank-kit up MODEL`")
    if model is None:
        if len(models) > 1:
            raise ConfigError(f"several models run ({', '.join(models)}): say which with --replace MODEL")
        return running
    chosen = [r for r in running if model in (r.model, getattr(r, "served_as", ""))]
    if not chosen:
        raise ConfigError(f"--replace {model}: no running server serves it; running: {', '.join(models)}")
    return chosen


def _next_free_port() -> int:
    """The first port after the recorded servers' (and the default) that nothing listens on."""
    port = max([launcher.DEFAULT_PORT - 1, *(r.port for r in launcher.list_servers())]) + 1
    while True:
        try:
            launcher.check_port_free(launcher.DEFAULT_HOST, port)
            return port
        except ServeError:
            port += 1
