"""Commands about the servers `up` started on this machine: status, down, logs (``launcher.daemon``'s records)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from rerank_kit import launcher

from ._options import JsonOpt, out, say

RecordedModelArg = Annotated[
    str | None,
    typer.Argument(metavar="MODEL", help="Only this model's servers (as given to `up`, or its served name)."),
]


def down(
    model: RecordedModelArg = None,
    port: Annotated[int | None, typer.Option(help="Port of the server to stop (default: all).")] = None,
) -> None:
    """Stop servers started with `up` (the whole process tree) and remove their pid files."""
    records = launcher.stop_servers(port, model)
    if not records:
        say("No rerank-kit servers are running.")
    for record in records:
        say(f"Stopped {record.model} on port {record.port} (pid {record.pid}).")


def status(
    model: RecordedModelArg = None,
    port: Annotated[int | None, typer.Option(help="Only this port.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show servers started with `up`, grouped by model: port, pid, URL, and whether /health answers."""
    rows = launcher.server_statuses(port, model)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        say("No rerank-kit servers are running.")
    else:
        table = Table("model", "port", "pid", "url", "state", "uptime")
        previous = None
        for row in rows:
            state = "healthy" if row["healthy"] else ("starting/unhealthy" if row["running"] else "dead")
            name = str(row["model"])
            if row["served_as"] != name:
                name += f" (as {row['served_as']})"
            if previous is not None and name != previous:
                table.add_section()
            label = name if name != previous else ""  # each model named once, above its servers
            previous = name
            table.add_row(label, str(row["port"]), str(row["pid"]), str(row["url"]), state, f"{row['uptime_s']} s")
        out.print(table)
    if port is not None and not any(r["healthy"] for r in rows):
        raise typer.Exit(1)


def logs(
    port: Annotated[int, typer.Option(help="Port of the server.")] = launcher.DEFAULT_PORT,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines.")] = 50,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines (Ctrl-C stops).")] = False,
) -> None:
    """Print the end of a server's log."""
    path = launcher.ServerRecord.log_path_for(port)
    print(launcher.tail(path, lines, missing_ok=False))
    if follow:
        try:
            for line in launcher.follow(path):
                print(line, end="", flush=True)
        except KeyboardInterrupt:
            return
