"""The `rerank-kit` command line: each command parses options and calls one library function.

Library errors become one readable line on stderr and exit code 1 (2 for bad usage).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shlex
import sys
import time
import typing
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from rerank_kit import launcher, machine
from rerank_kit.errors import ConfigError, RerankKitError, ServerStartError
from rerank_kit.recipes import FAMILIES, RECIPES, Recipe, get_recipe

app = typer.Typer(
    help="Serve cross-encoder rerankers on vLLM with the right flags, and call and benchmark them.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> Console:
    """Rich assumes 80 columns when output is not a terminal, which cuts the benchmark tables in CI
    logs and files to "con…"; without a terminal (and no COLUMNS), lines may be 160 wide."""
    stream = sys.stderr if stderr else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=160 if wide else None)


out = _console()
err = _console(stderr=True)

DEFAULT_GPU_MODEL = "mixedbread-ai/mxbai-rerank-base-v2"
DEFAULT_CPU_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)  # one unwrapped line, whatever the terminal width
    raise typer.Exit(code)


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a library function; its errors become one line (plus log tail for start failures)."""
    try:
        return fn(*args, **kwargs)
    except ServerStartError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except ConfigError as exc:
        fail(str(exc), 2)
    except RerankKitError as exc:
        fail(str(exc))


# --- shared serve options -----------------------------------------------------------------------

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
# The options `cmd`, `serve` and `up` share, declared once: (name, default, typer annotation).
_SERVE_OPTIONS: list[tuple[str, Any, Any]] = [
    (
        "family",
        None,
        Annotated[str | None, typer.Option("--family", help=f"Apply this family's recipe: {', '.join(FAMILIES)}.")],
    ),
    (
        "host",
        launcher.DEFAULT_HOST,
        Annotated[str, typer.Option(help="Interface to bind. 0.0.0.0 exposes the server to the network.")],
    ),
    ("port", launcher.DEFAULT_PORT, Annotated[int, typer.Option(help="Port to listen on.")]),
    (
        "max_model_len",
        None,
        Annotated[int | None, typer.Option("--max-model-len", help="Longest query+document prompt, in tokens.")],
    ),
    (
        "tensor_parallel_size",
        1,
        Annotated[int, typer.Option("--tensor-parallel-size", "-tp", help="GPUs per replica (tensor parallel).")],
    ),
    (
        "data_parallel_size",
        1,
        Annotated[int, typer.Option("--data-parallel-size", "-dp", help="Replicas inside one server (data parallel).")],
    ),
    ("dtype", None, Annotated[str | None, typer.Option(help="Override the dtype (default: chosen for this machine).")]),
    ("device", "auto", Annotated[str, typer.Option(help="auto (GPU if nvidia-smi sees one), cpu or cuda.")]),
    (
        "eager",
        False,
        Annotated[bool, typer.Option("--eager", help="Skip torch.compile: faster start, slower serving.")],
    ),
    (
        "kv_cache_gib",
        None,
        Annotated[float | None, typer.Option("--kv-cache-gib", help="CPU backend: memory for the KV cache, GiB.")],
    ),
    (
        "reserved_cpus",
        None,
        Annotated[
            int | None, typer.Option("--reserved-cpus", help="CPU backend: cores kept free for vLLM's scheduler.")
        ],
    ),
    (
        "cpu_executor",
        "auto",
        Annotated[
            str,
            typer.Option(
                "--cpu-executor",
                help="CPU backend: uni (model in the engine process), mp (vLLM's worker processes) or auto.",
            ),
        ],
    ),
    (
        "served_model_name",
        None,
        Annotated[str | None, typer.Option("--served-model-name", help="Model name clients send.")],
    ),
    (
        "max_documents",
        None,
        Annotated[
            int | None,
            typer.Option(
                "--max-documents", help="Documents per request the server accepts (default 1000; more is HTTP 413)."
            ),
        ],
    ),
    (
        "max_document_chars",
        None,
        Annotated[
            int | None, typer.Option("--max-document-chars", help="Characters per query or document (default 200000).")
        ],
    ),
    (
        "max_body_mb",
        None,
        Annotated[float | None, typer.Option("--max-body-mb", help="Request body size limit in MiB (default 32).")],
    ),
    (
        "insecure",
        False,
        Annotated[
            bool,
            typer.Option(
                "--insecure", help="Allow a non-local --host without an API key (e.g. behind an authenticating proxy)."
            ),
        ],
    ),
    (
        "strict_length",
        False,
        Annotated[
            bool,
            typer.Option(
                "--strict-length",
                help="Reject pairs longer than --max-model-len (HTTP 400) instead of truncating the document.",
            ),
        ],
    ),
    (
        "api_key",
        None,
        Annotated[
            str | None,
            typer.Option(
                "--api-key",
                help="Require this bearer key. Visible in `ps` while rerank-kit runs: prefer --api-key-file "
                "or the RERANK_KIT_API_KEY environment variable.",
            ),
        ],
    ),
    (
        "api_key_file",
        None,
        Annotated[Path | None, typer.Option("--api-key-file", help="Read the bearer key from this file.")],
    ),
]


def serve_options(fn: Any) -> Any:
    """Give a command the shared serve options; it receives them as ``family`` and ``options``."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # this module uses postponed annotations
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.name not in ("options", "family")
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, default, annotation in _SERVE_OPTIONS
    ]

    @functools.wraps(fn)
    def command(ctx: typer.Context, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name, _, _ in _SERVE_OPTIONS}
        family = values.pop("family")
        return fn(ctx, family=family, options=_options(ctx, **values), **kwargs)

    params = [*own, *shared]
    command.__signature__ = signature.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _options(
    ctx: typer.Context, *, device: str, api_key: str | None, api_key_file: Path | None, **values: Any
) -> launcher.ServeOptions:
    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {device!r}", 2)
    if values["cpu_executor"] not in ("auto", "uni", "mp"):
        fail(f"--cpu-executor must be auto, uni or mp, not {values['cpu_executor']!r}", 2)
    api_key_env = None
    if api_key is not None:
        # Handed to vLLM through the environment, never through its argv.
        os.environ["RERANK_KIT_API_KEY"] = api_key
        api_key_env = "RERANK_KIT_API_KEY"
    elif api_key_file is None and os.environ.get("RERANK_KIT_API_KEY"):
        # RERANK_KIT_API_KEY: serve with this bearer key when no --api-key/--api-key-file is given.
        api_key_env = "RERANK_KIT_API_KEY"
    return launcher.ServeOptions(
        device=device,  # type: ignore[arg-type]
        api_key_env=api_key_env,
        api_key_file=str(api_key_file) if api_key_file else None,
        extra_args=tuple(a for a in ctx.args if a != "--"),
        **values,
    )


def default_model(host: machine.Machine) -> str:
    """mxbai-rerank-base-v2 on a GPU; the packaged MiniLM (no download) without one."""
    return DEFAULT_GPU_MODEL if host.has_gpu else DEFAULT_CPU_MODEL


def _command(model: str | None, family: str | None, options: launcher.ServeOptions) -> launcher.Command:
    host = machine.detect()
    recipe: Recipe = run(get_recipe, model or default_model(host), family)
    return run(launcher.build_command, recipe, options, vllm_version=launcher.vllm_version(), machine=host)


def _print_choices(command: launcher.Command) -> None:
    for choice in command.choices:
        err.print(f"  {choice.name}={choice.value}  ({choice.reason})", markup=False, highlight=False)


# --- commands ------------------------------------------------------------------------------------


@app.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="A Markdown table (the one in the README).")] = False,
) -> None:
    """List the recipe table: every model rerank-kit knows how to serve."""
    if as_json:
        print(json.dumps({"models": [r.as_dict() for r in RECIPES.values()], "families": list(FAMILIES)}, indent=2))
        return
    if markdown:
        print(models_markdown())
        return
    table = Table("model", "family", "template", "max len", "instruction")
    for r in RECIPES.values():
        table.add_row(
            r.model_id,
            r.family,
            r.template or "-",
            str(r.max_model_len or "-"),
            "yes" if r.supports_instruction else "-",
        )
    out.print(table)
    out.print(f"Families for --family: {', '.join(FAMILIES)}")


def models_markdown() -> str:
    """The README's model table, generated from the recipes."""
    rows = ["| model | family | served as | score template | max len | instruction |", "|---|---|---|---|---|---|"]
    for r in RECIPES.values():
        rows.append(
            f"| `{r.model_id}` | {r.family} | {r.architecture} | {r.template or '-'} | "
            f"{r.max_model_len or '-'} | {'yes' if r.supports_instruction else '-'} |"
        )
    return "\n".join(rows)


@app.command("cmd", context_settings=EXTRA_ARGS)
@serve_options
def cmd_cmd(ctx: typer.Context, model: ModelArg = None, *, family: str | None, options: launcher.ServeOptions) -> None:
    """Print the exact vLLM command (with its environment) that `serve` would run.

    Extra vLLM flags go after `--`, e.g. `rerank-kit cmd BAAI/bge-reranker-base -- --max-num-seqs 64`.
    """
    command = _command(model, family, options)
    if command.choices:
        err.print("Chosen for this machine:", highlight=False)
        _print_choices(command)
    print(command.shell())


@app.command("serve", context_settings=EXTRA_ARGS)
@serve_options
def serve_cmd(
    ctx: typer.Context, model: ModelArg = None, *, family: str | None, options: launcher.ServeOptions
) -> None:
    """Run a vLLM server in the foreground (Ctrl-C stops it). Extra vLLM flags go after `--`."""
    command = _command(model, family, options)
    err.print(f"Serving {command.recipe.model_id} ({command.recipe.family}) at {command.url}", highlight=False)
    _print_choices(command)
    err.print(command.shell(), markup=False, highlight=False)
    run(launcher.run_foreground, command)


def _example_request(record: launcher.ServerRecord, keyed: bool) -> str:
    body = {
        "model": record.model,
        "query": "What is vLLM?",
        "documents": [
            "vLLM is a fast and easy-to-use library for LLM inference and serving.",
            "The Eiffel Tower is in Paris.",
            "PagedAttention manages attention keys and values in pages.",
        ],
        "top_n": 2,
    }
    auth = ' -H "Authorization: Bearer $RERANK_KIT_API_KEY"' if keyed else ""
    return (
        f"curl -s {record.url}/v1/rerank -H 'Content-Type: application/json'{auth} -d {shlex.quote(json.dumps(body))}"
    )


@app.command("up", context_settings=EXTRA_ARGS)
@serve_options
def up_cmd(
    ctx: typer.Context,
    model: ModelArg = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = launcher.DEFAULT_START_TIMEOUT,
    replicas: Annotated[
        int, typer.Option(help="Independent servers on consecutive ports, each on its own GPUs or cores.")
    ] = 1,
    *,
    family: str | None,
    options: launcher.ServeOptions,
) -> None:
    """Start a server in the background, wait until /health answers, print a request to try."""
    host = machine.detect()
    recipe: Recipe = run(get_recipe, model or default_model(host), family)
    commands = run(
        launcher.replica_commands, recipe, options, replicas, vllm_version=launcher.vllm_version(), machine=host
    )
    for command in commands:
        err.print(f"Starting {command.recipe.model_id} ({command.recipe.family}) on {command.url}", highlight=False)
        port = command.url.rsplit(":", 1)[1]
        err.print(f"  log: {launcher.state_dir() / f'server-{port}.log'}", highlight=False)
    _print_choices(commands[0])
    last = [0.0]

    def progress(elapsed: float) -> None:
        if elapsed - last[0] >= 10:
            last[0] = elapsed
            err.print(f"  waiting for /health ... {elapsed:.0f} s", highlight=False)

    started = time.monotonic()
    records = run(launcher.start_replicas, commands, timeout=timeout, on_wait=progress)
    err.print(
        f"Healthy after {time.monotonic() - started:.0f} s (pid {', '.join(str(r.pid) for r in records)}). Try:",
        highlight=False,
    )
    if len(records) > 1:
        err.print(
            f"  export RERANK_KIT_URL={','.join(r.url for r in records)}   # the client balances across them",
            highlight=False,
        )
    print(_example_request(records[0], keyed="VLLM_API_KEY" in commands[0].env))


@app.command("down")
def down_cmd(
    port: Annotated[int | None, typer.Option(help="Port of the server to stop (default: all).")] = None,
) -> None:
    """Stop servers started with `up` (the whole process tree) and remove their pid files."""
    ports = [port] if port is not None else [r.port for r in launcher.list_servers()]
    if not ports:
        err.print("No rerank-kit servers are running.", highlight=False)
        return
    for p in ports:
        record = run(launcher.stop_daemon, p)
        if record is None:
            fail(f"no rerank-kit server recorded on port {p}")
        err.print(f"Stopped {record.model} on port {p} (pid {record.pid}).", highlight=False)


@app.command("status")
def status_cmd(
    port: Annotated[int | None, typer.Option(help="Only this port.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show servers started with `up`: pid, model, URL, and whether /health answers."""
    import httpx

    records = [r for r in launcher.list_servers() if port is None or r.port == port]
    rows = []
    for r in records:
        healthy = False
        if r.alive:
            try:
                healthy = httpx.get(f"{r.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
        rows.append(
            {
                "port": r.port,
                "pid": r.pid,
                "model": r.model,
                "url": r.url,
                "running": r.alive,
                "healthy": healthy,
                "log": r.log,
                "uptime_s": round(time.time() - r.started),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        err.print("No rerank-kit servers are running.", highlight=False)
    else:
        table = Table("port", "pid", "model", "url", "state", "uptime")
        for row in rows:
            state = "healthy" if row["healthy"] else ("starting/unhealthy" if row["running"] else "dead")
            table.add_row(
                str(row["port"]), str(row["pid"]), str(row["model"]), str(row["url"]), state, f"{row['uptime_s']} s"
            )
        out.print(table)
    if port is not None and not any(r["healthy"] for r in rows):
        raise typer.Exit(1)


@app.command("logs")
def logs_cmd(
    port: Annotated[int, typer.Option(help="Port of the server.")] = launcher.DEFAULT_PORT,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines.")] = 50,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")] = False,
) -> None:
    """Print the end of a server's log."""
    path = launcher.state_dir() / f"server-{port}.log"
    if not path.exists():
        fail(f"no log for port {port} at {path}")
    print(launcher.tail(path, lines))
    if follow:
        with path.open() as fh:
            fh.seek(0, os.SEEK_END)
            try:
                while True:
                    line = fh.readline()
                    if line:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        time.sleep(0.5)
            except KeyboardInterrupt:
                return


@app.command("rank")
def rank_cmd(
    model: Annotated[str, typer.Argument(help="Model id or local directory (with --family).")],
    query: Annotated[str, typer.Option(help="The query.")],
    docs_file: Annotated[Path, typer.Option("--docs-file", help="JSON/JSONL/text file of documents.")],
    top_k: Annotated[int, typer.Option("--top-k", help="How many results to print.")] = 3,
    family: FamilyOpt = None,
    instruction: Annotated[str | None, typer.Option(help="Task instruction (Qwen3/mxbai/gemma).")] = None,
    max_model_len: MaxLenOpt = None,
    dtype: DtypeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Score documents in this process through vLLM's offline API, with the same recipe as `serve`."""
    from rerank_kit.inputs import load_documents
    from rerank_kit.offline import rank_offline

    docs = run(load_documents, docs_file)
    texts = [d if isinstance(d, str) else d["text"] for d in docs]
    recipe = run(get_recipe, model, family)
    if instruction and not recipe.supports_instruction:
        fail(f"{recipe.model_id} ({recipe.family}) takes no instruction; remove --instruction", 2)
    options = launcher.ServeOptions(max_model_len=max_model_len, dtype=dtype, eager=True)
    ranked = run(rank_offline, recipe, options, query, texts, top_k=top_k, instruction=instruction)
    if as_json:
        print(json.dumps([{"index": r.index, "score": r.score, "document": docs[r.index]} for r in ranked], indent=2))
        return
    table = Table("rank", "index", "score", "document")
    for n, r in enumerate(ranked, 1):
        table.add_row(str(n), str(r.index), f"{r.score:.4f}", r.text[:100])
    out.print(table)


@app.command("k8s")
def k8s_cmd(
    model: ModelArg = None,
    family: FamilyOpt = None,
    image: Annotated[str, typer.Option(help="Image built from this repository's Dockerfile.")] = "rerank-kit:latest",
    replicas: Annotated[int, typer.Option(help="Pods to start with (and the autoscaler's minimum).")] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", help="The autoscaler's maximum.")] = 4,
    gpus: Annotated[int, typer.Option(help="GPUs per pod (tensor parallel).")] = 1,
    target_in_flight: Annotated[
        int, typer.Option("--target-in-flight", help="In-flight requests per pod the autoscaler aims for.")
    ] = 32,
    api_key_secret: Annotated[
        str, typer.Option("--api-key-secret", help="Secret with an 'api-key' entry.")
    ] = "rerank-kit-api-key",  # noqa: S107 - the name of a Secret, not a key
    hf_cache_claim: Annotated[
        str | None, typer.Option("--hf-cache-claim", help="PersistentVolumeClaim for the weights cache.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the Deployment/Service/HPA.")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace.")] = None,
) -> None:
    """Print Kubernetes manifests (Deployment, Service, HorizontalPodAutoscaler) for a model."""
    from rerank_kit.k8s import K8sOptions, manifests, to_yaml

    recipe = run(get_recipe, model or DEFAULT_GPU_MODEL, family)
    options = K8sOptions(
        image=image,
        name=name,
        namespace=namespace,
        replicas=replicas,
        max_replicas=max_replicas,
        gpus=gpus,
        target_in_flight=target_in_flight,
        api_key_secret=api_key_secret,
        hf_cache_claim=hf_cache_claim,
    )
    print(to_yaml(run(manifests, recipe, options), recipe), end="")


# --- client commands ---------------------------------------------------------------------------------

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
    typer.Option("--api-key", help="Bearer key. Default: $RERANK_KIT_API_KEY (preferred: not visible in ps)."),
]
ModelNameOpt = Annotated[str | None, typer.Option("--model", help="Model name to send (default: ask the server).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _client(url: list[str] | None, api_key: str | None, **kwargs: Any) -> Any:
    from rerank_kit.client import RerankClient

    urls = [u for item in url for u in item.split(",") if u.strip()] if url else None
    return run(RerankClient, urls, api_key=api_key, **kwargs)


def _snippet(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("rerank")
def rerank_cmd(
    query: Annotated[str, typer.Option(help="The query.")],
    docs_file: Annotated[Path, typer.Option("--docs-file", help="JSON/JSONL/text file of documents.")],
    url: UrlOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Only the best K results.")] = None,
    model: ModelNameOpt = None,
    instruction: Annotated[str | None, typer.Option(help="Task instruction (Qwen3/mxbai/gemma).")] = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rerank the documents in a file against a query on a running server."""
    from rerank_kit.inputs import load_documents

    docs = run(load_documents, docs_file)
    with _client(url, api_key, model=model) as client:
        response = run(client.rerank, query, docs, top_n=top_k, instruction=instruction)
    if as_json:
        print(json.dumps(response.to_dict(), indent=2, default=str))
        return
    table = Table("rank", "index", "score", "document", title=f"{response.model}: {_snippet(query, 60)}")
    for n, r in enumerate(response.results, 1):
        table.add_row(str(n), str(r.index), f"{r.relevance_score:.4f}", _snippet(r.text))
    out.print(table)


@app.command("score")
def score_cmd(
    query: Annotated[list[str], typer.Option(help="A query (1:N); repeat it once per document for N:N pairs.")],
    docs_file: Annotated[Path, typer.Option("--docs-file", help="JSON/JSONL/text file of documents.")],
    url: UrlOpt = None,
    model: ModelNameOpt = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score query-document pairs (/v1/score) in input order."""
    from rerank_kit._core import document_text
    from rerank_kit.inputs import load_documents

    docs = run(load_documents, docs_file)
    texts = [document_text(d) for d in docs]
    queries: str | list[str] = query[0] if len(query) == 1 else query
    with _client(url, api_key, model=model) as client:
        response = run(client.score, queries, texts)
    if as_json:
        print(json.dumps(response.to_dict(), indent=2, default=str))
        return
    table = Table("index", "score", "query", "document", title=response.model)
    for i, score in enumerate(response.scores):
        table.add_row(
            str(i), f"{score:.4f}", _snippet(query[0] if len(query) == 1 else query[i], 30), _snippet(texts[i], 70)
        )
    out.print(table)


@app.command("health")
def health_cmd(url: UrlOpt = None, api_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Check each server: /health, the model it serves, its vLLM version. Exit 1 if any is down."""
    with _client(url, api_key) as client:
        statuses = client.health()
    if as_json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        table = Table("url", "healthy", "models", "vLLM", "latency")
        for s in statuses:
            table.add_row(
                s.url,
                "yes" if s.healthy else f"no ({s.error or 'unhealthy'})",
                ", ".join(s.models) or "-",
                s.version or "-",
                f"{s.latency_ms:.0f} ms" if s.latency_ms is not None else "-",
            )
        out.print(table)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@app.command("batch")
def batch_cmd(
    cases_file: Annotated[Path, typer.Option("--cases-file", help="JSON/JSONL list of {query, documents} cases.")],
    url: UrlOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Results shown per case.")] = 3,
    model: ModelNameOpt = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rerank many cases from one file; print the top results of each."""
    from rerank_kit.errors import InvalidInputError
    from rerank_kit.inputs import load_cases

    cases = run(load_cases, cases_file)
    report = []
    with _client(url, api_key, model=model) as client:
        for i, case in enumerate(cases):
            name = case.get("name", f"case {i}")
            kwargs = {"top_n": case.get("top_n", top_k), "instruction": case.get("instruction")}
            try:
                response = client.rerank(case["query"], case["documents"], **kwargs)
            except InvalidInputError as exc:
                if kwargs["instruction"] is None or "instruction" not in str(exc):
                    fail(f"{name}: {exc}", 2)
                # A sample written for instruction-following models: run it plainly, and say so.
                err.print(f"note: {name}: this model takes no instruction; ranked without it", highlight=False)
                response = run(client.rerank, case["query"], case["documents"], top_n=kwargs["top_n"])
            except RerankKitError as exc:
                fail(f"{name}: {exc}")
            report.append((name, case, response))
    if as_json:
        print(
            json.dumps(
                [{"name": name, "query": case["query"], **response.to_dict()} for name, case, response in report],
                indent=2,
                default=str,
            )
        )
        return
    table = Table("case", "query", "rank", "index", "score", "document")
    for name, case, response in report:
        for n, r in enumerate(response.results, 1):
            table.add_row(
                name if n == 1 else "",
                _snippet(case["query"], 40) if n == 1 else "",
                str(n),
                str(r.index),
                f"{r.relevance_score:.4f}",
                _snippet(r.text, 60),
            )
    out.print(table)


@app.command("verify")
def verify_cmd(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="The served model's recipe id, or a local directory with --family.")
    ],
    url: UrlOpt = None,
    family: FamilyOpt = None,
    weights: Annotated[
        str | None,
        typer.Option(help="Local directory with the same weights (default: the model path or the Hugging Face cache)."),
    ] = None,
    instruction: Annotated[
        str | None, typer.Option(help="Verify with this instruction (models that take one).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Largest acceptable |Δscore| (bf16 servers: ~1e-2; float32: 1e-4).")
    ] = 0.02,
    served_model: Annotated[
        str | None, typer.Option("--served-model", help="Model name to send (default: ask the server).")
    ] = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a running server's scores against the model's reference implementation, computed here.

    Prints max |Δscore| and rank agreement; exits 1 when the server misses the tolerance or ranks a
    different document first.
    """
    from rerank_kit.reference import load_reference
    from rerank_kit.verify import local_weights, verify

    recipe = run(get_recipe, model, family)
    path = run(local_weights, recipe, weights)
    reference = run(load_reference, recipe.family, str(path))
    with _client(url, api_key) as client:
        report = run(verify, client, reference, instruction=instruction, tolerance=tolerance, model=served_model)
    if as_json:
        print(json.dumps({k: v for k, v in report.__dict__.items()} | {"passed": report.passed}, indent=2))
    else:
        table = Table("check", "value", title=f"{report.model} vs {recipe.family} reference ({report.pairs} pairs)")
        table.add_row("max |Δscore|", f"{report.max_abs:.2e}")
        table.add_row("mean |Δscore|", f"{report.mean_abs:.2e}")
        table.add_row("Kendall tau (mean per query)", f"{report.kendall_tau:.3f}")
        table.add_row("same top-1 document", f"{report.top1_agreement:.0%}")
        table.add_row("verdict", "PASS" if report.passed else f"FAIL (tolerance {report.tolerance:g})")
        out.print(table)
    if not report.passed:
        raise typer.Exit(1)


# --- bench ------------------------------------------------------------------------------------------

bench_app = typer.Typer(
    help="Benchmark a rerank endpoint: throughput, latency, and retrieval quality on judged data.\n\n"
    "Run: rerank-kit bench --url URL --concurrency 16. Build a BEIR workload: rerank-kit bench build --dataset DIR.",
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(bench_app, name="bench")


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"--concurrency must be a number or a comma-separated list like 1,4,16,64, not {text!r}", 2)
    if not levels or min(levels) < 1:
        fail("--concurrency values must be >= 1", 2)
    return levels


@bench_app.callback()
def bench_cmd(
    ctx: typer.Context,
    url: UrlOpt = None,
    concurrency: Annotated[
        str, typer.Option(help="In-flight requests (closed loop); a list like 1,4,16,64 sweeps.")
    ] = "16",
    requests: Annotated[
        int | None, typer.Option(help="Measured requests per level (default: one pass over the workload).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Measure for this many seconds instead of a request count.")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Open loop: Poisson arrivals at this many requests/s.")] = None,
    workload: Annotated[
        str, typer.Option(help="random, a JSON/JSONL file of {query, documents}, or beir:DIR (beir:NAME downloads).")
    ] = "random",
    docs_per_request: Annotated[
        int, typer.Option("--docs-per-request", help="Documents per request (random; top-k for beir:).")
    ] = 100,
    doc_tokens: Annotated[int, typer.Option("--doc-tokens", help="Tokens per random document.")] = 120,
    cases: Annotated[int, typer.Option(help="Distinct random requests generated.")] = 64,
    warmup: Annotated[int, typer.Option(help="Requests sent first and not counted.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for the random workload and open-loop arrivals.")] = 0,
    model: ModelNameOpt = None,
    api_key: ClientKeyOpt = None,
    max_retries: Annotated[
        int | None, typer.Option("--max-retries", help="Client retries per request (default: the client's).")
    ] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the full report as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Sweep plot (PNG) path; default next to --out.")] = None,
    compare: Annotated[
        tuple[Path, Path] | None, typer.Option(help="Print two saved reports side by side and exit.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark a rerank endpoint (see `rerank-kit bench --help`)."""
    if ctx.invoked_subcommand is not None:
        return
    from rerank_kit.bench import report as rep

    if compare is not None:
        a, b = (run(rep.load_report, p) for p in compare)
        out.print(rep.compare_table(a, b, (compare[0].name, compare[1].name)))
        return
    if requests is not None and duration is not None:
        fail("pass --requests or --duration, not both", 2)
    levels = _levels(concurrency)
    if rate is not None and len(levels) > 1:
        fail("--rate runs one open-loop level; drop the concurrency list", 2)
    urls = [u for item in url for u in item.split(",") if u.strip()] if url else None
    if urls is None:
        env_url = os.environ.get("RERANK_KIT_URL")
        urls = [u for u in env_url.split(",") if u.strip()] if env_url else None
    if not urls:
        fail("no server URL: pass --url (or set RERANK_KIT_URL)", 2)
    from rerank_kit.bench.runner import BenchConfig
    from rerank_kit.bench.workloads import load_workload

    err.print(f"Loading workload {workload} ...", highlight=False)
    wl = run(load_workload, workload, docs_per_request=docs_per_request, doc_tokens=doc_tokens, cases=cases, seed=seed)
    reports = []
    for level in levels:
        config = BenchConfig(
            urls=urls,
            api_key=api_key,
            model=model,
            workload=workload,
            docs_per_request=docs_per_request,
            doc_tokens=doc_tokens,
            cases=cases,
            seed=seed,
            concurrency=level,
            rate=rate,
            requests=requests,
            duration=duration,
            warmup=warmup,
            max_retries=max_retries,
        )
        report = _run_bench_level(config, wl)
        report["command"] = shlex.join(["rerank-kit", *sys.argv[1:]])
        reports.append(report)
        if not as_json:
            out.print(rep.summary_table(report))
            for extra in (rep.quality_table(report), rep.replica_table(report)):
                if extra is not None:
                    out.print(extra)
        if report["summary"]["interrupted"]:
            break
    data: dict[str, Any] = reports[0] if len(reports) == 1 else {"sweep": reports}
    if len(reports) > 1:
        if not as_json:
            out.print(rep.sweep_table(reports))
        png = plot or (out_path.with_suffix(".png") if out_path else Path("bench-sweep.png"))
        rep.plot_sweep(reports, png)
        err.print(f"Plot: {png}", highlight=False)
    if out_path:
        rep.write_json(data, out_path)
        err.print(f"Report: {out_path}", highlight=False)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    if any(r["summary"]["ok"] == 0 for r in reports):
        raise typer.Exit(1)


def _run_bench_level(config: Any, workload: Any) -> dict[str, Any]:
    """One load level with a live progress bar; Ctrl-C stops it and keeps what was measured."""
    import asyncio
    import signal

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rerank_kit.bench.runner import run_bench

    total = config.requests or (None if config.duration else len(workload.cases))
    label = f"rate {config.rate}/s" if config.rate else f"concurrency {config.concurrency}"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} requests"),
        TextColumn("{task.fields[live]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=total or config.duration, live="warming up")
        stats = {"ok": 0, "errors": 0, "pairs": 0}

        def progress(sample: Any, elapsed: float) -> None:
            stats["ok" if sample.ok else "errors"] += 1
            stats["pairs"] += sample.pairs
            live = f"{stats['pairs'] / max(elapsed, 1e-9):,.0f} pairs/s, {stats['errors']} errors"
            if total:
                bar.update(task, completed=stats["ok"] + stats["errors"], live=live)
            else:
                bar.update(task, completed=min(elapsed, config.duration), live=live)

        async def main() -> dict[str, Any]:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, stop.set)
            try:
                return await run_bench(config, workload=workload, on_progress=progress, stop=stop)
            finally:
                loop.remove_signal_handler(signal.SIGINT)

        return run(asyncio.run, main())


@bench_app.command("build")
def bench_build_cmd(
    dataset: Annotated[str, typer.Option(help="BEIR dataset directory (or a BEIR name such as scifact to download).")],
    out: Annotated[Path, typer.Option(help="Where to write the workload (JSONL).")] = Path("workload.jsonl"),
    top_k: Annotated[int, typer.Option("--top-k", help="BM25 candidates per query.")] = 100,
    split: Annotated[str, typer.Option(help="Which qrels split to judge against.")] = "test",
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="Only the first N queries.")] = None,
) -> None:
    """Build a reranking workload from a BEIR dataset: BM25 (bm25s) top-k candidates per query, with qrels."""
    from rerank_kit.bench.workloads import build_beir_workload, write_workload

    wl = run(
        build_beir_workload,
        dataset,
        top_k=top_k,
        split=split,
        max_queries=max_queries,
        progress=lambda m: err.print(m, highlight=False),
    )
    write_workload(wl, out)
    judged = len(wl.qrels or {})
    err.print(f"Wrote {len(wl.cases)} queries x top-{top_k} candidates ({judged} judged) to {out}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
