"""Commands that call a running server: rerank, score, health, batch, verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rerank_kit.client import RerankClient
from rerank_kit.client.files import load_cases, load_documents
from rerank_kit.recipes import get_recipe
from rerank_kit.types import document_text

from ._options import (
    ClientKeyOpt,
    DocsFileOpt,
    FamilyOpt,
    InstructionOpt,
    JsonOpt,
    ModelNameOpt,
    QueryOpt,
    UrlOpt,
    out,
    say,
    snippet,
)


def _client(url: list[str] | None, api_key: str | None, **kwargs: Any) -> RerankClient:
    # repeated --url options and comma-separated lists both name replicas; none: RERANK_KIT_URL
    return RerankClient(url or None, api_key=api_key, **kwargs)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def rerank(
    query: QueryOpt,
    docs_file: DocsFileOpt,
    url: UrlOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Only the best K results.")] = None,
    model: ModelNameOpt = None,
    instruction: InstructionOpt = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rerank the documents in a file against a query on a running server."""
    docs = load_documents(docs_file)
    with _client(url, api_key, model=model) as client:
        response = client.rerank(query, docs, top_n=top_k, instruction=instruction)
    if as_json:
        _print_json(response.to_dict())
        return
    table = Table("rank", "index", "score", "document", title=f"{response.model}: {snippet(query, 60)}")
    for n, r in enumerate(response.results, 1):
        table.add_row(str(n), str(r.index), f"{r.relevance_score:.4f}", snippet(r.text))
    out.print(table)


def score(
    query: Annotated[list[str], typer.Option(help="A query (1:N); repeat it once per document for N:N pairs.")],
    docs_file: DocsFileOpt,
    url: UrlOpt = None,
    model: ModelNameOpt = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score query-document pairs (/v1/score) in input order."""
    texts = [document_text(d) for d in load_documents(docs_file)]
    queries: str | list[str] = query[0] if len(query) == 1 else query
    with _client(url, api_key, model=model) as client:
        response = client.score(queries, texts)
    if as_json:
        _print_json(response.to_dict())
        return
    table = Table("index", "score", "query", "document", title=response.model)
    for i, value in enumerate(response.scores):
        table.add_row(
            str(i), f"{value:.4f}", snippet(query[0] if len(query) == 1 else query[i], 30), snippet(texts[i], 70)
        )
    out.print(table)


def health(url: UrlOpt = None, api_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Check each server: /health, the model it serves, its vLLM version. Exit 1 if any is down."""
    with _client(url, api_key) as client:
        statuses = client.health()
    if as_json:
        _print_json([s.to_dict() for s in statuses])
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


def batch(
    cases_file: Annotated[Path, typer.Option("--cases-file", help="JSON/JSONL list of {query, documents} cases.")],
    url: UrlOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Results shown per case.")] = 3,
    model: ModelNameOpt = None,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rerank many cases from one file; print the top results of each."""
    from rerank_kit.client.batch import rerank_cases

    cases = load_cases(cases_file)
    with _client(url, api_key, model=model) as client:
        results = rerank_cases(client, cases, top_n=top_k, on_note=lambda note: say(f"note: {note}"))
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    table = Table("case", "query", "rank", "index", "score", "document")
    for case in results:
        for n, r in enumerate(case.response.results, 1):
            table.add_row(
                case.name if n == 1 else "",
                snippet(case.query, 40) if n == 1 else "",
                str(n),
                str(r.index),
                f"{r.relevance_score:.4f}",
                snippet(r.text, 60),
            )
    out.print(table)


def verify(
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
    prompt_only: Annotated[
        bool,
        typer.Option(
            "--prompt-only",
            help="Only the self-check: compare the server's prompt token counts with the reference prompt "
            "(needs the tokenizer, not the weights).",
        ),
    ] = False,
    api_key: ClientKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a running server's scores against the model's reference implementation, computed here.

    Prints max |Δscore| and rank agreement; exits 1 when the server misses the tolerance or ranks a
    different document first. With --prompt-only, runs the start-up self-check instead and exits 1
    with "self-check failed: ..." when the server's prompt differs from the reference.
    """
    from rerank_kit.launcher.verify import tokenizer_source, verify_server

    recipe = get_recipe(model, family)
    if prompt_only:
        from rerank_kit.launcher.selfcheck import self_check

        with _client(url, api_key) as client:
            check = self_check(client, recipe, tokenizer=tokenizer_source(recipe, weights), model=served_model)
        if as_json:
            probes = [p.__dict__ for p in check.probes]
            _print_json({"passed": check.passed, "skipped": check.skipped, "probes": probes})
        else:
            say(check.summary())
        check.raise_for_failure()
        return
    with _client(url, api_key) as client:
        report = verify_server(
            client, recipe, weights=weights, instruction=instruction, tolerance=tolerance, model=served_model
        )
    if as_json:
        _print_json(dict(report.__dict__) | {"passed": report.passed})
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
