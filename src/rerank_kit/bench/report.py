"""Benchmark reports for people (tables, a PNG plot) and programs (JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from rerank_kit.errors import ConfigError


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def summary_table(report: dict[str, Any]) -> Table:
    s = report["summary"]
    lat = s["latency_ms"]
    table = Table(title=f"{_model(report)} | {report['workload']['description']}", show_header=True)
    for col in (
        "concurrency",
        "rate",
        "req/s",
        "pairs/s",
        "tokens/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "ok",
        "errors",
    ):
        table.add_column(col, justify="right")
    table.add_row(*_row(report, s, lat))
    models = s.get("models") or []
    if len(models) > 1:  # the model changed during the run (rerank-kit switch)
        table.caption = "answered by " + " -> ".join(
            f"{m['model']} ({m['requests']} requests, {m['first_s']:.1f}-{m['last_s']:.1f} s)" for m in models
        )
    return table


def _row(report: dict[str, Any], s: dict[str, Any], lat: dict[str, Any]) -> list[str]:
    load = report["load"]
    errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
    if report.get("replays"):  # see ConnectionClosedError: answered, but only on a second send
        errors += f" ({report['replays']} sent twice: connection closed unanswered)"
    return [
        str(load["concurrency"]) if not load.get("rate") else "-",
        _fmt(load.get("rate")),
        _fmt(s["requests_per_s"], 2),
        _fmt(s["pairs_per_s"]),
        _fmt(s["tokens_per_s"], 0),
        _fmt(lat["p50"], 0),
        _fmt(lat["p90"], 0),
        _fmt(lat["p99"], 0),
        _fmt(lat["max"], 0),
        str(s["ok"]),
        errors,
    ]


def _model(report: dict[str, Any]) -> str:
    for url, info in report.get("server", {}).items():
        if url != "urls" and isinstance(info, dict) and info.get("models"):
            version = info.get("version")
            return f"{info['models'][0]['id']} (vLLM {version})" if version else info["models"][0]["id"]
    return "server"


def quality_table(report: dict[str, Any]) -> Table | None:
    quality = report.get("quality")
    if not quality:
        return None
    table = Table(title=f"Retrieval quality on {quality['queries']['judged']} judged queries (BEIR evaluator)")
    for col in ("ranking", "nDCG@10", "MRR@10", "Recall@100"):
        table.add_column(col, justify="right" if col != "ranking" else "left")
    for name, key in (("first stage (BM25)", "first_stage"), ("reranked", "reranked")):
        if key in quality:
            m = quality[key]
            table.add_row(name, f"{m['ndcg@10']:.4f}", f"{m['mrr@10']:.4f}", f"{m['recall@100']:.4f}")
    return table


def replica_table(report: dict[str, Any]) -> Table | None:
    replicas = report.get("replicas") or {}
    if len(replicas) < 2:
        return None
    table = Table("replica", "requests served", title=f"Per replica ({report.get('retries', 0)} retries/failovers)")
    for url, count in replicas.items():
        table.add_row(url, str(count))
    return table


def sweep_table(reports: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=f"Sweep: {_model(reports[0])} | {reports[0]['workload']['description']}")
    for col in (
        "concurrency",
        "rate",
        "req/s",
        "pairs/s",
        "tokens/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "ok",
        "errors",
    ):
        table.add_column(col, justify="right")
    for report in reports:
        table.add_row(*_row(report, report["summary"], report["summary"]["latency_ms"]))
    return table


def plot_sweep(reports: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Throughput (pairs/s) against p99 latency, one point per concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["summary"]["latency_ms"]["p99"] for r in reports]
    ys = [r["summary"]["pairs_per_s"] for r in reports]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, ys, marker="o")
    for r, x, y in zip(reports, xs, ys, strict=True):
        ax.annotate(f"c={r['load']['concurrency']}", (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (query-document pairs/s)")
    ax.set_title(_model(reports[0]))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


COMPARED = [
    ("requests/s", ("summary", "requests_per_s")),
    ("pairs/s", ("summary", "pairs_per_s")),
    ("tokens/s", ("summary", "tokens_per_s")),
    ("p50 ms", ("summary", "latency_ms", "p50")),
    ("p90 ms", ("summary", "latency_ms", "p90")),
    ("p99 ms", ("summary", "latency_ms", "p99")),
    ("max ms", ("summary", "latency_ms", "max")),
    ("errors", ("summary", "errors")),
    ("nDCG@10 reranked", ("quality", "reranked", "ndcg@10")),
    ("MRR@10 reranked", ("quality", "reranked", "mrr@10")),
]


def _get(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def load_report(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"report {str(path)!r} does not exist") from None
    except ValueError as exc:
        raise ConfigError(f"report {str(path)!r} is not JSON: {exc}") from None
    if "sweep" in data:
        data = data["sweep"][-1]
    if "summary" not in data:
        raise ConfigError(f"{path} is not a rerank-kit bench report (no 'summary')")
    return data


def compare_table(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]) -> Table:
    table = Table("metric", names[0], names[1], "b / a", title="Side by side")
    for label, path in COMPARED:
        va, vb = _get(a, path), _get(b, path)
        if isinstance(va, dict) or isinstance(vb, dict):
            table.add_row(label, json.dumps(va or {}), json.dumps(vb or {}), "")
            continue
        ratio = f"{vb / va:.2f}x" if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else "-"
        table.add_row(label, _fmt(va, 2), _fmt(vb, 2), ratio)
    return table


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
