"""What the vLLM plugin does with a request's chat_template_kwargs, without a server.

The skeleton cache (rerank_kit.server.checks.cached_shape) treats the instruction as a placeholder and stays
bounded whatever a client varies; names the renderer sets itself are refused before any render, with a
ValueError that names them (vLLM answers a ValueError raised while it builds prompts with its own 400).
"""

from __future__ import annotations

import logging

import pytest

from rerank_kit.errors import InvalidInputError
from rerank_kit.server import checks
from rerank_kit.server import prompts as score_prompts
from rerank_kit.server.prompts import PIECE_SEP

TEMPLATE = "a Qwen3-style template"  # the cache key's text; the renderer below stands in for it


class Renderer:
    """A verbatim template that uses its instruction like rerank-kit's (a default when it is empty), and
    counts its renders."""

    def __init__(self) -> None:
        self.renders = 0

    def __call__(self, kwargs: dict, query: str, document: str) -> str:
        self.renders += 1
        task = kwargs.get("instruction") or "default task"
        sep = kwargs.get("piece_sep", "")
        return f"<s>{sep}<Instruct>: {task}\n<Query>: {query}\n<Document>: {document}{sep}</s>"


def test_a_thousand_instructions_share_one_skeleton():
    shapes: dict = {}
    render, expected = Renderer(), Renderer()
    for i in range(1000):
        kwargs = {"instruction": f"task {i} for user {i * 7919 % 1000}", "piece_sep": PIECE_SEP}
        shape = checks.cached_shape(shapes, TEMPLATE, kwargs, render)
        assert score_prompts.fill(shape, "q", "d") == expected(kwargs, "q", "d")
    assert len(shapes) == 1
    assert render.renders == 1 + len(score_prompts.PROBES)  # rendered for the first instruction only


def test_the_cache_stays_at_its_bound_whatever_else_a_client_varies():
    shapes: dict = {}
    render = Renderer()
    for i in range(1000):
        checks.cached_shape(shapes, TEMPLATE, {"instruction": f"task {i}", "user": i}, render)
    assert len(shapes) == checks.MAX_SHAPES
    # the most recently used are kept
    kept = [key for _, key in shapes]
    assert kept == [repr(sorted({"instruction": score_prompts.INSTRUCTION_MARK, "user": i}.items()))
                    for i in range(1000 - checks.MAX_SHAPES, 1000)]  # fmt: skip
    # a hit moves an entry to the end instead of adding one
    checks.cached_shape(shapes, TEMPLATE, {"instruction": "again", "user": 1000 - checks.MAX_SHAPES}, render)
    assert len(shapes) == checks.MAX_SHAPES and next(reversed(shapes))[1] == kept[0]


def test_no_instruction_has_its_own_skeleton():
    shapes: dict = {}
    render = Renderer()
    for kwargs in ({}, {"instruction": ""}, {"instruction": None}, {"instruction": "Find it"}):
        shape = checks.cached_shape(shapes, TEMPLATE, kwargs, render)
        assert score_prompts.fill(shape, "q", "d") == Renderer()(kwargs, "q", "d")
    assert len(shapes) == 4


@pytest.mark.parametrize("mark", score_prompts.MARKS)
def test_an_instruction_with_a_placeholder_character_is_built_per_pair(mark):
    shapes: dict = {}
    assert checks.cached_shape(shapes, TEMPLATE, {"instruction": f"task {mark}"}, Renderer()) is None
    assert shapes == {}


# vLLM's safe_apply_chat_template(model_config, tokenizer, conversation, *, tools, chat_template, tokenize,
# **kwargs) and transformers' render(messages=...) take these themselves; piece_sep is the plugin's.
RESERVED = ["model_config", "tokenizer", "conversation", "tools", "chat_template", "tokenize", "messages", "piece_sep"]


@pytest.mark.parametrize("key", RESERVED)
def test_a_kwarg_the_renderer_sets_itself_is_a_clear_400(key):
    with pytest.raises(InvalidInputError) as caught:
        checks.check_template_kwargs({"instruction": "Find it", key: None})
    assert isinstance(caught.value, ValueError)  # what vLLM turns into its 400
    message = str(caught.value)
    assert f"'{key}'" in message and "Remove" in message
    assert "multiple values" not in message


def test_every_colliding_kwarg_is_named_at_once():
    with pytest.raises(InvalidInputError, match=r"'chat_template', 'tokenize', 'tools'"):
        checks.check_template_kwargs({"tools": [], "tokenize": True, "chat_template": "x", "enable_thinking": False})


def test_the_templates_own_variables_pass():
    checks.check_template_kwargs(None)
    checks.check_template_kwargs({"instruction": "Find it", "enable_thinking": False, "documents": None})
    checks.check_template_kwargs({"piece_sep": PIECE_SEP}, ours=("piece_sep",))


@pytest.mark.parametrize("key", RESERVED[:-1])
def test_the_skeleton_code_refuses_before_rendering_and_says_nothing_about_verbatim(key, caplog):
    shapes: dict = {}
    render = Renderer()
    with caplog.at_level(logging.INFO, logger="vllm.rerank_kit"), pytest.raises(InvalidInputError, match=key):
        checks.cached_shape(shapes, TEMPLATE, {key: None, "piece_sep": PIECE_SEP}, render)
    assert render.renders == 0 and shapes == {}
    assert "verbatim" not in caplog.text


def test_the_reserved_names_cover_what_the_installed_vllm_renderer_takes():
    hf = pytest.importorskip("vllm.renderers.hf")
    import inspect

    taken = {
        name
        for name, p in inspect.signature(hf.safe_apply_chat_template).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    assert taken <= checks.reserved_kwargs()
    assert checks.reserved_kwargs() == set(RESERVED)
