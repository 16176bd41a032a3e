"""Moving the gateway to another model without dropping a request (`rerank-kit switch`): start the new
model's servers, point the gateway at them, wait until the old servers have answered what they were
sent, stop them. The gateway itself (Caddy) is ``rerank_kit.launcher.gateway``.

``switch`` starts the new model's servers answering to the old model's names too (vLLM takes several
``--served-model-name``; answers carry the first, the new one), so callers that keep sending the old
name are served by the new model instead of getting a 404.

    from rerank_kit.launcher import gateway, switch
    from rerank_kit import launcher
    new = launcher.commands_for("BAAI/bge-reranker-v2-m3", None, launcher.ServeOptions(port=8001))
    switch.switch(new, launcher.list_servers(), gateway=gateway.running_gateway(), say=print)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rerank_kit import launcher
from rerank_kit.errors import ConfigError, ServeError
from rerank_kit.launcher._gateway_config import dial
from rerank_kit.launcher.gateway import POLL_INTERVAL, GatewayRecord, apply, discover_backends, in_flight

DRAIN_TIMEOUT = 600.0


def with_aliases(command: launcher.Command, aliases: Sequence[str]) -> launcher.Command:
    """``command`` also answering to ``aliases`` as the model name (its own name stays first, so answers
    carry it). vLLM reads the last --served-model-name, so this one wins over the recipe's."""
    extra = [a for a in dict.fromkeys(aliases) if a and a != command.model_name]
    if not extra:
        return command
    return command.with_args("--served-model-name", command.model_name, *extra)


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
    dials = {dial(u) for u in urls}
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
    t = time.monotonic()
    records = launcher.start_replicas(
        list(commands), timeout=start_timeout, on_wait=launcher.health_progress(step), check=check
    )
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

    shown = [-5.0]

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
