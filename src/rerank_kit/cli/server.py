"""Commands that start or describe servers from the recipes: models, cmd/serve/up, rank-local.

The servers `up` started are listed, stopped and read by ``running`` (status, down, logs); k8s manifests and
verify-models are ``deploy``'s."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rerank_kit import launcher
from rerank_kit._contract import (
    API_KEY_ENV,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CHUNKS_PER_DOC,
    DEFAULT_MAX_DOCUMENT_CHARS,
    DEFAULT_MAX_DOCUMENTS,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    RERANK_PATH,
    URL_ENV,
    VLLM_API_KEY_ENV,
)
from rerank_kit.errors import ConfigError
from rerank_kit.launcher import machine
from rerank_kit.recipes import (
    DEFAULT_CPU_MODEL,
    DEFAULT_GPU_MODEL,
    FAMILIES,
    RECIPES,
    default_model,
    get_recipe,
)

from ._options import (
    DocsFileOpt,
    DtypeOpt,
    FamilyOpt,
    InstructionOpt,
    JsonOpt,
    MaxLenOpt,
    ModelArg,
    QuantizationOpt,
    QueryOpt,
    out,
    say,
    self_check,
)
from .readme import models_markdown, verified

# `cmd`, `serve` and `up` take vLLM flags after `--`, passed on unchanged.
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def models(
    as_json: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table (the one in the README).")] = False,
) -> None:
    """List the recipe table: every model rerank-kit knows how to serve."""
    if as_json:
        print(json.dumps({"models": [r.as_dict() for r in RECIPES.values()], "families": list(FAMILIES)}, indent=2))
        return
    if markdown:
        print(models_markdown())
        return
    table = Table("model", "family", "template", "max len", "instruction", "verified")
    for r in RECIPES.values():
        table.add_row(
            r.model_id,
            r.family,
            r.template or "-",
            str(r.max_model_len or "-"),
            "yes" if r.supports_instruction else "-",
            verified(r),
        )
    out.print(table)
    out.print(f"Families for --family: {', '.join(FAMILIES)}")


SERVER_HELP = {
    "cmd": "Print the exact vLLM command (with its environment) that `serve` would run: one line per server "
    "(several MODELs, or --replicas N, print every server's, on consecutive ports).\n\n"
    "Extra vLLM flags go after `--`, e.g. `rerank-kit cmd BAAI/bge-reranker-base -- --max-num-seqs 64`.",
    "serve": "Run one MODEL's vLLM server in the foreground (Ctrl-C stops it); for several models or replicas "
    "use `up`. Extra vLLM flags go after `--`.",
    "up": "Start servers in the background: one per MODEL (N with --replicas N) on consecutive ports from --port, "
    "each model's replicas together. Waits until each answers /health and passes the self-check, then prints "
    "RERANK_KIT_URL with every server (the client routes each call to the servers of its model=) and a "
    "request to try. `status` lists them by model; `down [MODEL]` stops them.",
}


def server(
    ctx: typer.Context,
    model: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="MODEL",
            help="Hub ids from `rerank-kit models`, or local directories with --family; several are served "
            f"side by side by `up`. Default: {DEFAULT_GPU_MODEL} with a GPU, {DEFAULT_CPU_MODEL} "
            "(packaged weights) without.",
        ),
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option(
            "--family",
            metavar="FAMILY",
            help=f"Apply this family's recipe: {', '.join(FAMILIES)}. Once for every MODEL, or once per MODEL "
            "in order.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind. 0.0.0.0 exposes the server to the network.")
    ] = launcher.DEFAULT_HOST,
    port: Annotated[
        int, typer.Option(help="Port to listen on (further servers take the next ones).")
    ] = launcher.DEFAULT_PORT,
    max_model_len: MaxLenOpt = None,
    tensor_parallel_size: Annotated[
        int, typer.Option("--tensor-parallel-size", "-tp", help="GPUs per replica (tensor parallel).")
    ] = 1,
    data_parallel_size: Annotated[
        int, typer.Option("--data-parallel-size", "-dp", help="Replicas inside one server (data parallel).")
    ] = 1,
    dtype: DtypeOpt = None,
    quantization: QuantizationOpt = None,
    device: Annotated[str, typer.Option(help="auto (GPU if nvidia-smi sees one), cpu or cuda.")] = "auto",
    eager: Annotated[bool, typer.Option("--eager", help="Skip torch.compile: faster start, slower serving.")] = False,
    kv_cache_gib: Annotated[
        float | None, typer.Option("--kv-cache-gib", help="CPU backend: memory for the KV cache, GiB.")
    ] = None,
    reserved_cpus: Annotated[
        int | None, typer.Option("--reserved-cpus", help="CPU backend: cores kept free for vLLM's scheduler.")
    ] = None,
    cpu_executor: Annotated[
        str,
        typer.Option(
            "--cpu-executor",
            help="CPU backend: uni (model in the engine process), mp (vLLM's worker processes) or auto.",
        ),
    ] = "auto",
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="Model name clients send.")
    ] = None,
    max_documents: Annotated[
        int | None,
        typer.Option(
            "--max-documents",
            help=f"Documents per request the server accepts (default {DEFAULT_MAX_DOCUMENTS}; more is HTTP 413).",
        ),
    ] = None,
    max_document_chars: Annotated[
        int | None,
        typer.Option(
            "--max-document-chars", help=f"Characters per query or document (default {DEFAULT_MAX_DOCUMENT_CHARS})."
        ),
    ] = None,
    max_body_mb: Annotated[
        float | None,
        typer.Option("--max-body-mb", help=f"Request body size limit in MiB (default {DEFAULT_MAX_BODY_BYTES >> 20})."),
    ] = None,
    max_images: Annotated[
        int | None,
        typer.Option(
            "--max-images",
            help=f"Images per request, for vision rerankers (default {DEFAULT_MAX_IMAGES}; more is HTTP 413).",
        ),
    ] = None,
    max_image_mb: Annotated[
        float | None,
        typer.Option(
            "--max-image-mb",
            help=f"Size limit per image in MiB, inline or fetched by URL (default {DEFAULT_MAX_IMAGE_BYTES >> 20}).",
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            "--max-in-flight",
            help="Requests one server process runs at once; more get HTTP 429 with Retry-After "
            "(default: chosen for the machine, printed with why; 0: unbounded).",
        ),
    ] = None,
    max_chunks_per_doc: Annotated[
        int | None,
        typer.Option(
            "--max-chunks-per-doc",
            help="Long documents: windows scored per document when a request does not say (its "
            f"max_chunks_per_doc); the document gets its best window's score (default {DEFAULT_MAX_CHUNKS_PER_DOC}"
            "; 1 truncates to the first window).",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow a non-local --host without an API key (e.g. behind an authenticating proxy)."
        ),
    ] = False,
    strict_length: Annotated[
        bool,
        typer.Option(
            "--strict-length", help="Reject pairs longer than --max-model-len (HTTP 400) instead of truncating them."
        ),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Require this bearer key. Visible in `ps` while rerank-kit runs: prefer --api-key-file "
            f"or the {API_KEY_ENV} environment variable.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option("--api-key-file", help="Read the bearer key from this file.")
    ] = None,
    replicas: Annotated[
        int, typer.Option(help="cmd, up: independent servers on consecutive ports, each on its own GPUs or cores.")
    ] = 1,
    timeout: Annotated[float, typer.Option(help="up: seconds to wait for /health.")] = launcher.DEFAULT_START_TIMEOUT,
    no_self_check: Annotated[
        bool,
        typer.Option(
            "--no-self-check",
            help="serve, up: skip the start-up check that the server builds the model's reference prompt "
            "(it sends one probe through /v1/rerank and compares prompt token counts).",
        ),
    ] = False,
) -> None:
    # One function behind `cmd`, `serve` and `up` (SERVER_HELP): they share every option. MODEL... also
    # gets every argument after `--` (click ends options there); a model never starts with "-", so the
    # first argument that does begins the vLLM flags.
    given = model or []
    split = next((i for i, arg in enumerate(given) if arg.startswith("-")), len(given))
    models, flags = given[:split], given[split:]
    options = launcher.ServeOptions(
        host=host,
        port=port,
        max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=data_parallel_size,
        dtype=dtype,
        quantization=quantization,
        device=device,  # type: ignore[arg-type]  # checked by ServeOptions
        eager=eager,
        kv_cache_gib=kv_cache_gib,
        reserved_cpus=reserved_cpus,
        cpu_executor=cpu_executor,  # type: ignore[arg-type]
        served_model_name=served_model_name,
        max_documents=max_documents,
        max_document_chars=max_document_chars,
        max_body_mb=max_body_mb,
        max_images=max_images,
        max_image_mb=max_image_mb,
        max_in_flight=max_in_flight,
        max_chunks_per_doc=max_chunks_per_doc,
        insecure=insecure,
        strict_length=strict_length,
        api_key=api_key,
        api_key_file=str(api_key_file) if api_key_file else None,
        extra_args=tuple(a for a in [*flags, *ctx.args] if a != "--"),
    )
    mode = ctx.info_name
    if mode == "serve" and (replicas != 1 or len(models) > 1):
        raise ConfigError(
            "serve runs one server in the foreground: use `rerank-kit up MODEL... [--replicas N]` for several"
        )
    commands = launcher.commands_for(models, family, options, replicas=replicas)
    firsts = commands[::replicas]  # each model's first server
    for note in dict.fromkeys(note for command in firsts for note in command.notes):
        say(f"warning: {note}")
    if mode == "cmd":
        for command in firsts:
            if command.choices:
                say(
                    f"Chosen for this machine ({command.recipe.model_id}):"
                    if len(firsts) > 1
                    else "Chosen for this machine:"
                )
                _print_choices(command)
        for command in commands:
            print(command.shell())
    elif mode == "serve":
        command = commands[0]
        say(f"Serving {command.recipe.model_id} ({command.recipe.family}) at {command.url}")
        _print_choices(command)
        say(command.shell())
        raise typer.Exit(launcher.run_foreground(command, check=None if no_self_check else self_check))
    else:
        _up(commands, timeout, check=None if no_self_check else self_check)


def _print_choices(command: launcher.Command) -> None:
    for choice in command.choices:
        say(f"  {choice.name}={choice.value}  ({choice.reason})")


def _up(commands: list[launcher.Command], timeout: float, check: Callable[[launcher.Command], None] | None) -> None:
    for command in commands:
        say(f"Starting {command.recipe.model_id} ({command.recipe.family}) on {command.url}")
        say(f"  log: {launcher.ServerRecord.log_path_for(command.port)}")
    _print_choices(commands[0])
    started = time.monotonic()
    records = launcher.start_replicas(commands, timeout=timeout, on_wait=launcher.health_progress(say), check=check)
    say(f"Healthy after {time.monotonic() - started:.0f} s (pid {', '.join(str(r.pid) for r in records)}). Try:")
    groups = launcher.by_model(records)
    if len(groups) > 1:
        why = "the client sends each call to the servers of its model= and balances across them"
    else:
        why = "the client balances across them"
    if len(records) > 1:
        say(f"  export {URL_ENV}={','.join(r.url for r in records)}   # {why}")
    for group in groups.values():  # one request per model, each a line of its own
        print(_example_request(group[0], keyed=VLLM_API_KEY_ENV in commands[0].env))


def _example_request(record: launcher.ServerRecord, keyed: bool) -> str:
    body = {
        "model": record.served_model,
        "query": "What is vLLM?",
        "documents": [
            "vLLM is a fast and easy-to-use library for LLM inference and serving.",
            "The Eiffel Tower is in Paris.",
            "PagedAttention manages attention keys and values in pages.",
        ],
        "top_n": 2,
    }
    auth = f' -H "Authorization: Bearer ${API_KEY_ENV}"' if keyed else ""
    data = shlex.quote(json.dumps(body))
    return f"curl -s {record.url}{RERANK_PATH} -H 'Content-Type: application/json'{auth} -d {data}"


def rank_local(
    model: ModelArg = None,
    *,
    query: QueryOpt,
    docs_file: DocsFileOpt,
    top_k: Annotated[int, typer.Option("--top-k", help="How many results to print.")] = 3,
    family: FamilyOpt = None,
    instruction: InstructionOpt = None,
    max_model_len: MaxLenOpt = None,
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score documents in THIS process (no server) through vLLM's offline API, with the same recipe as `serve`."""
    from rerank_kit.client.files import load_documents
    from rerank_kit.launcher.offline import rank_offline

    docs = load_documents(docs_file)
    recipe = get_recipe(model or default_model(machine.detect().has_gpu), family)
    options = launcher.ServeOptions(max_model_len=max_model_len, dtype=dtype, eager=True)
    response = rank_offline(recipe, options, query, docs, top_n=top_k, instruction=instruction)
    if as_json:
        print(
            json.dumps(
                [{"index": r.index, "score": r.relevance_score, "document": r.document} for r in response], indent=2
            )
        )
        return
    table = Table("rank", "index", "score", "document")
    for n, r in enumerate(response, 1):
        table.add_row(str(n), str(r.index), f"{r.relevance_score:.4f}", r.text[:100])
    out.print(table)
