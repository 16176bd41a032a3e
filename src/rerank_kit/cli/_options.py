"""What the CLI commands share: the two consoles, the option types (each declared once) and the self-check."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from rerank_kit._contract import API_KEY_ENV
from rerank_kit.launcher.quantization import QUANTIZATION_METHODS
from rerank_kit.recipes import DEFAULT_CPU_MODEL, DEFAULT_GPU_MODEL, FAMILIES

if TYPE_CHECKING:
    from rerank_kit.launcher.command import Command


def _console(stderr: bool = False) -> Console:
    """Rich assumes 80 columns when output is not a terminal, which cuts the benchmark tables in CI
    logs and files to "con…"; without a terminal (and no COLUMNS), lines may be 160 wide."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=160 if wide else None)


out = _console()  # what a program may read: tables and JSON
err = _console(stderr=True)  # what a person reads: progress, choices, notes


def self_check(command: Command) -> None:
    """The start-up self-check of a server ``command`` started, its report said on stderr; raises on failure."""
    from rerank_kit.launcher.selfcheck import check_command

    check_command(command, on_report=lambda report: say(f"{command.url}: {report.summary()}"))


def say(message: str) -> None:
    """One line for the person at the terminal (stderr), printed as written."""
    err.print(message, markup=False, highlight=False)


def snippet(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- options shared by several commands -------------------------------------------------------------

ModelArg = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        help="Hub id from `rerank-kit models`, or a local directory with --family. "
        f"Default: {DEFAULT_GPU_MODEL} with a GPU, {DEFAULT_CPU_MODEL} (packaged weights) without.",
    ),
]
FamilyOpt = Annotated[str | None, typer.Option("--family", help=f"Apply this family's recipe: {', '.join(FAMILIES)}.")]
MaxLenOpt = Annotated[int | None, typer.Option("--max-model-len", help="Longest query+document prompt, in tokens.")]
DtypeOpt = Annotated[str | None, typer.Option(help="Override the dtype (default: chosen for this machine).")]
QuantizationOpt = Annotated[
    str | None,
    typer.Option(
        "--quantization",
        metavar="METHOD",
        help=f"Serve quantized: {', '.join(QUANTIZATION_METHODS)}; each model family allows some "
        "(`rerank-kit models --json`). The CPU backend runs compressed-tensors INT8 W8A8 checkpoints at float32.",
    ),
]
DocsFileOpt = Annotated[Path, typer.Option("--docs-file", help="JSON/JSONL/text file of documents.")]
QueryOpt = Annotated[str, typer.Option(help="The query.")]
InstructionOpt = Annotated[str | None, typer.Option(help="Task instruction (Qwen3/mxbai/gemma).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

# client commands
UrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="Server URL; repeat (or separate with commas) for replicas. Default: $RERANK_KIT_URL.",
    ),
]
ClientKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", help=f"Bearer key. Default: ${API_KEY_ENV} (preferred: not visible in ps)."),
]
ModelNameOpt = Annotated[str | None, typer.Option("--model", help="Model name to send (default: ask the server).")]
