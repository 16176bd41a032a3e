"""Benchmark workloads: what each request sends.

- ``random``: deterministic synthetic text (seeded) with controlled lengths, in words drawn from a
  list of common English words that are one token each in BERT, XLM-R and Qwen vocabularies, so a
  document of L words is about L tokens. The report states the measured tokens per pair.
- ``images``: for vision rerankers (jina-reranker-m0), seeded synthetic images (shapes on a coloured ground, PNG,
  ``side`` x ``side`` pixels) as documents, a random text query; the model resizes each to its own pixel budget.
- a JSON/JSONL file of ``{query, documents}`` cases (see rerank_kit.client.files).
- BEIR datasets: queries with first-stage (BM25) candidates and, when qrels exist, judgments, so
  the benchmark can also report retrieval quality. ``build_beir_workload`` writes them as JSONL.

    >>> w = random_workload(cases=2, docs_per_request=3, doc_tokens=5, seed=1)
    >>> len(w.cases), len(w.cases[0].documents), len(w.cases[0].documents[0].split())
    (2, 3, 5)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_kit.client.files import load_cases
from rerank_kit.errors import ConfigError

WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which this be or has had "
    "not but first one their its new after who they have her she two been other when there all during into "
    "school time may years more most only over city some world would where later up such used many can state "
    "about national out known university united then made team system water group music world house game "
    "film work area life family power party part small number early data model search query document answer "
    "question energy market river court health light space language history science computer network server "
    "memory cache engine speed cost price value table field result paper study report test point level line "
    "order place name word book story road car train plane ship food tree plant animal fish bird body head "
    "hand heart blood cell gene brain mind idea plan rule law right left north south east west day night "
    "year month week hour minute second morning evening summer winter spring autumn red blue green black white"
).split()


@dataclass(frozen=True)
class Case:
    """One request: a query and its candidate documents (with ids and first-stage scores for BEIR)."""

    query: str
    documents: list[Any]  # texts, or ImageDocuments (the images workload)
    qid: str | None = None
    doc_ids: list[str] | None = None
    first_stage: list[float] | None = None
    instruction: str | None = None


@dataclass
class Workload:
    name: str
    cases: list[Case]
    # qid -> {doc id: graded relevance}; present when the workload has judgments.
    qrels: dict[str, dict[str, int]] | None = None
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return bool(self.qrels)


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def random_workload(
    cases: int = 64, docs_per_request: int = 100, doc_tokens: int = 120, query_tokens: int = 6, seed: int = 0
) -> Workload:
    """``cases`` distinct requests of ``docs_per_request`` documents of ~``doc_tokens`` tokens each."""
    if min(cases, docs_per_request, doc_tokens, query_tokens) < 1:
        raise ConfigError("random workload sizes must all be >= 1")
    rng = random.Random(seed)
    built = [
        Case(query=_text(rng, query_tokens), documents=[_text(rng, doc_tokens) for _ in range(docs_per_request)])
        for _ in range(cases)
    ]
    return Workload(
        name="random",
        cases=built,
        description=f"{docs_per_request} docs x ~{doc_tokens} tokens, query ~{query_tokens} tokens, seed {seed}",
        params={
            "docs_per_request": docs_per_request,
            "doc_tokens": doc_tokens,
            "query_tokens": query_tokens,
            "seed": seed,
            "cases": cases,
        },
    )


def image_workload(
    cases: int = 16, docs_per_request: int = 16, side: int = 448, query_tokens: int = 6, seed: int = 0
) -> Workload:
    """``cases`` requests of ``docs_per_request`` distinct images each (four seeded ellipses and rectangles on a
    coloured ground, ``side`` pixels square, sent inline as PNG), for vision rerankers."""
    from PIL import Image, ImageDraw

    from rerank_kit.client.images import ImageDocument

    if min(cases, docs_per_request, side, query_tokens) < 1:
        raise ConfigError("image workload sizes must all be >= 1")
    rng = random.Random(seed)

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    def image() -> ImageDocument:
        canvas = Image.new("RGB", (side, side), colour())
        draw = ImageDraw.Draw(canvas)
        for shape in range(4):
            x0, y0 = rng.randrange(side // 2), rng.randrange(side // 2)
            box = (x0, y0, x0 + rng.randrange(8, side // 2), y0 + rng.randrange(8, side // 2))
            (draw.ellipse if shape % 2 else draw.rectangle)(box, fill=colour())
        return ImageDocument.of(canvas)

    built = [
        Case(query=_text(rng, query_tokens), documents=[image() for _ in range(docs_per_request)]) for _ in range(cases)
    ]
    return Workload(
        name="images",
        cases=built,
        description=f"{docs_per_request} images of {side}x{side} px, query ~{query_tokens} tokens, seed {seed}",
        params={
            "docs_per_request": docs_per_request,
            "side": side,
            "query_tokens": query_tokens,
            "seed": seed,
            "cases": cases,
        },
    )


def file_workload(path: str | Path, docs_per_request: int | None = None) -> Workload:
    """Cases from a JSON/JSONL file; BEIR workloads written by `rerank-kit bench build` keep their judgments."""
    items = load_cases(path)
    cases, qrels = [], {}
    for item in items:
        docs = item["documents"]
        texts = [d if isinstance(d, str) else d["text"] for d in docs]
        ids = item.get("doc_ids")
        first = item.get("first_stage")
        if docs_per_request:
            texts, ids, first = (
                texts[:docs_per_request],
                ids and ids[:docs_per_request],
                first and first[:docs_per_request],
            )
        cases.append(
            Case(
                query=item["query"],
                documents=texts,
                qid=item.get("qid"),
                doc_ids=ids,
                first_stage=first,
                instruction=item.get("instruction"),
            )
        )
        if item.get("qid") is not None and item.get("qrels"):
            qrels[str(item["qid"])] = {str(k): int(v) for k, v in item["qrels"].items()}
    return Workload(
        name=Path(path).name, cases=cases, qrels=qrels or None, description=f"{len(cases)} cases from {path}"
    )


# --- BEIR ------------------------------------------------------------------------------------------------


def resolve_beir_dataset(spec: str, download_dir: str | Path | None = None) -> Path:
    """A local BEIR directory for ``spec``: an existing directory, or a BEIR dataset name to download.

    Downloading (``beir:scifact``) uses BEIR's own helper and needs internet access.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "corpus.jsonl").exists() or not (path / "queries.jsonl").exists():
            raise ConfigError(f"{path} is not a BEIR dataset: it needs corpus.jsonl and queries.jsonl")
        return path
    if "/" in spec or spec.startswith("."):
        raise ConfigError(f"BEIR dataset directory {spec!r} does not exist")
    from beir import util

    target = Path(download_dir or Path.home() / ".cache" / "rerank-kit" / "beir")
    if (target / spec / "corpus.jsonl").exists():
        return target / spec
    url = f"https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{spec}.zip"
    try:
        return Path(util.download_and_unzip(url, str(target)))
    except Exception as exc:
        raise ConfigError(f"cannot download BEIR dataset {spec!r} ({exc}); pass a local directory instead") from exc


def build_beir_workload(
    dataset: str | Path,
    *,
    top_k: int = 100,
    split: str = "test",
    max_queries: int | None = None,
    judged_only: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Workload:
    """BM25 (bm25s) top-``top_k`` candidates for each query of a BEIR dataset, with its qrels."""
    import bm25s
    from beir.datasets.data_loader import GenericDataLoader

    path = resolve_beir_dataset(str(dataset))
    has_qrels = (path / "qrels" / f"{split}.tsv").exists()
    if has_qrels:
        corpus, queries, qrels = GenericDataLoader(str(path)).load(split=split)
    else:
        corpus, queries = GenericDataLoader(str(path)).load_custom()[:2]
        qrels = {}
    qids = [q for q in queries if not judged_only or not has_qrels or q in qrels]
    if max_queries:
        qids = qids[:max_queries]
    doc_ids = list(corpus)
    texts = [(corpus[d].get("title", "") + " " + corpus[d].get("text", "")).strip() for d in doc_ids]
    if progress:
        progress(f"indexing {len(texts)} documents with BM25")
    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:  # PyStemmer is optional for bm25s
        stemmer = None
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    k = min(top_k, len(texts))
    query_tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    hits, scores = retriever.retrieve(query_tokens, k=k, show_progress=False)
    cases = []
    for row, qid in enumerate(qids):
        ids = [doc_ids[i] for i in hits[row]]
        cases.append(
            Case(
                query=queries[qid],
                documents=[texts[i] for i in hits[row]],
                qid=qid,
                doc_ids=ids,
                first_stage=[float(s) for s in scores[row]],
            )
        )
    return Workload(
        name=f"beir:{path.name}",
        cases=cases,
        qrels={q: dict(qrels[q]) for q in qids if q in qrels} or None,
        description=f"{len(cases)} queries x BM25 top-{k} from {path.name} ({split})",
        params={"dataset": str(path), "top_k": k, "split": split},
    )


def write_workload(workload: Workload, out: str | Path) -> Path:
    """Write a workload as JSONL that `file_workload` (and `rerank-kit bench --workload FILE`) reads back."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for case in workload.cases:
            row: dict[str, Any] = {"qid": case.qid, "query": case.query, "documents": case.documents}
            if case.doc_ids is not None:
                row["doc_ids"] = case.doc_ids
            if case.first_stage is not None:
                row["first_stage"] = case.first_stage
            if workload.qrels and case.qid in workload.qrels:
                row["qrels"] = workload.qrels[case.qid]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def load_workload(
    spec: str, *, docs_per_request: int = 100, doc_tokens: int = 120, cases: int = 64, seed: int = 0
) -> Workload:
    """``random``, ``images`` (``images:SIDE`` for SIDE-pixel images), ``beir:DIR_OR_NAME`` or a path to a JSON/JSONL
    file."""
    if spec == "random":
        return random_workload(cases=cases, docs_per_request=docs_per_request, doc_tokens=doc_tokens, seed=seed)
    if spec == "images" or spec.startswith("images:"):
        side = spec.partition(":")[2] or "448"
        if not side.isdigit():
            raise ConfigError(f"workload {spec!r}: images or images:SIDE, SIDE the images' width in pixels (448)")
        return image_workload(cases=cases, docs_per_request=docs_per_request, side=int(side), seed=seed)
    if spec.startswith("beir:"):
        return build_beir_workload(spec.removeprefix("beir:"), top_k=docs_per_request)
    if not Path(spec).exists():
        raise ConfigError(
            f"workload {spec!r}: use 'random', 'images[:SIDE]' (vision rerankers), 'beir:DIR' (or beir:NAME to "
            "download), or a JSON/JSONL file"
        )
    return file_workload(spec, docs_per_request=None)
