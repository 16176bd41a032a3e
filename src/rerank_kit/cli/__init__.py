"""The `rerank-kit` command line: each command parses options and calls library functions.

This module is the one place where a library error becomes a message and an exit code: one
readable line on stderr (a start failure adds the server's log tail and the likely fix) and exit
code 2 for bad input or configuration, 1 for everything else.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from rerank_kit.errors import ConfigError, RerankKitError, ServerStartError

from . import bench, calls, deploy, gateway, running, server


class _ErrorsToMessages(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except RerankKitError as exc:
            # ServerStartError's text is several lines (log tail, hint): printed whole; others are one line.
            message = str(exc) if isinstance(exc, ServerStartError) else " ".join(str(exc).split("\n"))
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None


app = typer.Typer(
    cls=_ErrorsToMessages,
    help="Serve cross-encoder rerankers on vLLM with the right flags, and call and benchmark them.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

# servers on this machine
app.command("models")(server.models)
for _name, _help in server.SERVER_HELP.items():
    app.command(_name, help=_help, context_settings=server.EXTRA_ARGS)(server.server)
app.command("down")(running.down)
app.command("status")(running.status)
app.command("logs")(running.logs)
app.command("rank-local")(server.rank_local)
app.command("rank", hidden=True, help="Old name of rank-local.")(server.rank_local)
app.command("k8s")(deploy.k8s)
app.command("gateway")(gateway.gateway)
app.command("switch", context_settings=server.EXTRA_ARGS)(gateway.switch)
# calls to a running server
app.command("rerank")(calls.rerank)
app.command("score")(calls.score)
app.command("health")(calls.health)
app.command("batch")(calls.batch)
app.command("verify")(calls.verify)
app.command("verify-models")(deploy.verify_models)
app.add_typer(bench.bench_app, name="bench")


def main() -> None:
    app()


__all__ = ["app", "main"]
