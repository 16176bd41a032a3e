"""The long-document variant of a BEIR dataset (rerank_kit.bench.long_documents), built from TREC DL19's
5,000 MS MARCO passages when the shared data is here, and from a tiny hand-made dataset otherwise."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rerank_kit.bench.long_documents import SEPARATOR, build_long_dataset, main
from rerank_kit.bench.workloads import build_beir_workload
from rerank_kit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DL19 = ROOT.parent / "shared" / "data" / "beir" / "msmarco-dl19-5k"
needs_dl19 = pytest.mark.skipif(not DL19.exists(), reason=f"{DL19} is absent (shared benchmark data)")
FILLERS = 7
FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "PROVENANCE.md")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def judged_ids(dataset: Path) -> set[str]:
    lines = (dataset / "qrels" / "test.tsv").read_text().splitlines()[1:]
    return {line.split("\t")[1] for line in lines}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_long_dataset(DL19, tmp_path_factory.mktemp("long") / "dl19", fillers=FILLERS, seed=0)


@pytest.fixture(scope="module")
def layout(built) -> list[tuple[dict, dict, list[str], int]]:
    """(source record, built record, the built text's paragraphs, the passage's position) per passage."""
    source = read_jsonl(DL19 / "corpus.jsonl")
    assert not any(SEPARATOR in r["text"] for r in source)  # else paragraphs would not split back
    rows = []
    for before, after in zip(source, read_jsonl(built / "corpus.jsonl"), strict=True):
        paragraphs = after["text"].split(SEPARATOR)
        rows.append((before, after, paragraphs, paragraphs.index(before["text"])))
    return rows


@needs_dl19
def test_same_inputs_give_the_same_bytes(built, tmp_path):
    again = build_long_dataset(DL19, tmp_path / "again", fillers=FILLERS, seed=0)
    for name in FILES:
        assert (again / name).read_bytes() == (built / name).read_bytes(), name


@needs_dl19
def test_another_seed_gives_other_documents_with_the_same_ids(built, tmp_path):
    other = build_long_dataset(DL19, tmp_path / "seed1", fillers=FILLERS, seed=1)
    assert (other / "corpus.jsonl").read_bytes() != (built / "corpus.jsonl").read_bytes()
    ids = [r["_id"] for r in read_jsonl(other / "corpus.jsonl")]
    assert ids == [r["_id"] for r in read_jsonl(built / "corpus.jsonl")]


@needs_dl19
def test_every_passage_is_a_document_with_its_id_title_and_text_once(layout):
    assert len(layout) == 5000
    judged = judged_ids(DL19)
    assert sum(before["_id"] in judged for before, *_ in layout) == 4102
    for before, after, paragraphs, _ in layout:
        assert after.keys() == before.keys() and after["_id"] == before["_id"]
        assert after["title"] == before["title"] and after["metadata"] == before["metadata"]
        assert after["text"].count(before["text"]) == 1
        assert len(paragraphs) == FILLERS + 1


@needs_dl19
def test_fillers_are_distinct_unjudged_passages_never_the_passage_itself(layout):
    judged = judged_ids(DL19)
    unjudged = {before["text"] for before, *_ in layout if before["_id"] not in judged}
    assert len(unjudged) == 898
    for before, _, paragraphs, position in layout:
        fillers = paragraphs[:position] + paragraphs[position + 1 :]
        assert set(fillers) <= unjudged and len(set(fillers)) == FILLERS
        assert before["text"] not in fillers


@needs_dl19
def test_the_passage_is_at_every_position_about_equally_often(layout):
    positions = Counter(position for *_, position in layout)
    assert set(positions) == set(range(FILLERS + 1))  # first, every middle one, last
    expected = len(layout) / (FILLERS + 1)  # 625; a binomial's standard deviation here is ~23
    assert all(0.8 * expected < n < 1.2 * expected for n in positions.values()), positions


@needs_dl19
def test_queries_and_qrels_are_copied_and_beir_loads_them(built):
    from beir.datasets.data_loader import GenericDataLoader

    for name in ("queries.jsonl", "qrels/test.tsv"):
        assert (built / name).read_bytes() == (DL19 / name).read_bytes()
    corpus, queries, qrels = GenericDataLoader(str(built)).load(split="test")
    _, source_queries, source_qrels = GenericDataLoader(str(DL19)).load(split="test")
    assert len(corpus) == 5000 and queries == source_queries and qrels == source_qrels
    assert "Every passage of the source dataset" in (built / "PROVENANCE.md").read_text()


@needs_dl19
def test_the_bench_beir_workload_loads_it(built):
    wl = build_beir_workload(built, top_k=10, max_queries=3)
    assert len(wl.cases) == 3 and all(len(c.documents) == 10 for c in wl.cases)
    assert all(len(doc) > 1000 for c in wl.cases for doc in c.documents)
    assert all(c.qid in wl.qrels for c in wl.cases)


# --- reuse, replacement, refusals, the CLI: a tiny dataset ---------------------------------------------------


@pytest.fixture
def tiny(tmp_path) -> Path:
    """3 judged passages, 5 unjudged, 2 queries."""
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    passages = [{"_id": f"p{i}", "title": "", "text": f"passage number {i}.", "metadata": {}} for i in range(8)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    queries = [{"_id": "q1", "text": "number one"}, {"_id": "q2", "text": "number two"}]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t2\nq1\tp0\t0\nq2\tp2\t1\n")
    return root


def test_same_inputs_reuse_the_build_and_other_inputs_replace_it(tiny, tmp_path):
    out, said = tmp_path / "out", []
    build_long_dataset(tiny, out, fillers=3, seed=0)
    written = (out / "corpus.jsonl").stat().st_mtime_ns
    build_long_dataset(tiny, out, fillers=3, seed=0, progress=said.append)
    assert "reused" in said[-1] and (out / "corpus.jsonl").stat().st_mtime_ns == written
    before = (out / "corpus.jsonl").read_bytes()
    build_long_dataset(tiny, out, fillers=3, seed=5, progress=said.append)
    assert (out / "corpus.jsonl").read_bytes() != before and "- seed: 5" in (out / "PROVENANCE.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny"]  # no temporary directory left


def test_a_changed_source_is_rebuilt(tiny, tmp_path):
    out, said = tmp_path / "out", []
    build_long_dataset(tiny, out, fillers=2)
    with (tiny / "corpus.jsonl").open("a") as fh:
        fh.write(json.dumps({"_id": "p8", "title": "", "text": "passage number 8.", "metadata": {}}) + "\n")
    build_long_dataset(tiny, out, fillers=2, progress=said.append)
    assert not any("reused" in s for s in said) and len(read_jsonl(out / "corpus.jsonl")) == 9


def test_refusals(tiny, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by this builder"):
        build_long_dataset(tiny, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="outside the source"):
        build_long_dataset(tiny, tiny / "long")
    with pytest.raises(ConfigError, match="5 passages no query judges"):
        build_long_dataset(tiny, tmp_path / "out", fillers=5)  # an unjudged passage has only 4 others


def test_cli_prints_what_it_wrote_and_the_lengths(tiny, tmp_path, capsys):
    assert main(["--source", str(tiny), "--out", str(tmp_path / "out"), "--fillers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 8 documents" in printed and "characters:   min 55  median 55  max 55" in printed
    assert "MiniLM tokens" in printed
    assert main(["--source", str(tiny), "--out", str(tmp_path / "out"), "--fillers", "2"]) == 0
    assert "reused it" in capsys.readouterr().out
    assert main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
