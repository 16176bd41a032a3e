"""`rerank-kit bench` and `rerank-kit bench build`: options in, rerank_kit.bench.sweep does the work."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ._options import ClientKeyOpt, JsonOpt, ModelNameOpt, UrlOpt, err, out, say

bench_app = typer.Typer(
    help="Benchmark a rerank endpoint: throughput, latency, and retrieval quality on judged data.\n\n"
    "Run: rerank-kit bench --url URL --concurrency 16. Build a BEIR workload: rerank-kit bench build --dataset DIR.",
    invoke_without_command=True,
    rich_markup_mode=None,
)


@bench_app.callback()
def bench(
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
        str,
        typer.Option(
            help="random, images[:SIDE] (synthetic SIDE-pixel images for vision rerankers, default 448), a JSON/JSONL "
            "file of {query, documents}, or beir:DIR (beir:NAME downloads)."
        ),
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
    http: Annotated[
        str,
        typer.Option(
            help="The load generator's HTTP stack: aiohttp (least CPU per request, bench/RESULTS.md section 3; "
            "needs the bench extra), httpx (the client's own), or auto: aiohttp when installed."
        ),
    ] = "auto",
    max_chunks_per_doc: Annotated[
        int | None,
        typer.Option(
            "--max-chunks-per-doc",
            help="Send max_chunks_per_doc with every request: windows a rerank-kit server scores per long "
            "document (1: truncate to the first window; default: the server's).",
        ),
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
    from rerank_kit.bench import sweep
    from rerank_kit.bench.runner import BenchConfig
    from rerank_kit.client._config import urls_or_env

    if compare is not None:
        a, b = (rep.load_report(p) for p in compare)
        out.print(rep.compare_table(a, b, (compare[0].name, compare[1].name)))
        return
    levels = sweep.parse_levels(concurrency)
    config = BenchConfig(
        urls=urls_or_env(url),
        api_key=api_key,
        model=model,
        workload=workload,
        docs_per_request=docs_per_request,
        doc_tokens=doc_tokens,
        cases=cases,
        seed=seed,
        concurrency=levels[0],
        rate=rate,
        requests=requests,
        duration=duration,
        warmup=warmup,
        max_retries=max_retries,
        max_chunks_per_doc=max_chunks_per_doc,
        http=http,
    )
    sweep.check_sweep(config, levels)
    say(f"Loading workload {workload} ...")
    wl = sweep.workload_for(config)

    def show(report: dict[str, Any]) -> None:
        if as_json:
            return
        out.print(rep.summary_table(report))
        for extra in (rep.quality_table(report), rep.replica_table(report)):
            if extra is not None:
                out.print(extra)

    reports = sweep.run_sweep(
        config,
        levels,
        workload=wl,
        progress=_progress_bar,
        on_report=show,
        command=shlex.join(["rerank-kit", *sys.argv[1:]]),
    )
    if len(reports) > 1 and not as_json:
        out.print(rep.sweep_table(reports))
    for path in sweep.save_reports(reports, out=out_path, plot=plot):
        say(f"{'Plot' if path.suffix == '.png' else 'Report'}: {path}")
    if as_json:
        print(json.dumps(sweep.sweep_data(reports), indent=2, default=str))
    if sweep.all_failed(reports):
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress_bar(config: Any, workload: Any) -> Iterator[Callable[[Any, float], None]]:
    """A live progress line while one level runs: requests done, pairs/s, errors."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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

        yield progress


@bench_app.command("build")
def build(
    dataset: Annotated[str, typer.Option(help="BEIR dataset directory (or a BEIR name such as scifact to download).")],
    out: Annotated[Path, typer.Option(help="Where to write the workload (JSONL).")] = Path("workload.jsonl"),
    top_k: Annotated[int, typer.Option("--top-k", help="BM25 candidates per query.")] = 100,
    split: Annotated[str, typer.Option(help="Which qrels split to judge against.")] = "test",
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="Only the first N queries.")] = None,
) -> None:
    """Build a reranking workload from a BEIR dataset: BM25 (bm25s) top-k candidates per query, with qrels."""
    from rerank_kit.bench.workloads import build_beir_workload, write_workload

    wl = build_beir_workload(dataset, top_k=top_k, split=split, max_queries=max_queries, progress=say)
    write_workload(wl, out)
    judged = len(wl.qrels or {})
    say(f"Wrote {len(wl.cases)} queries x top-{top_k} candidates ({judged} judged) to {out}")
