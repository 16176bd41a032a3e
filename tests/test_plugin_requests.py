"""What the vLLM plugin does with a request's chat_template_kwargs, without a server.

The skeleton cache (rerank_kit.server.plugin._cached_shape) treats the instruction as a placeholder and stays
bounded whatever a client varies.
"""

from __future__ import annotations

import pytest

from rerank_kit.server import plugin
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
        shape = plugin._cached_shape(shapes, TEMPLATE, kwargs, render)
        assert score_prompts.fill(shape, "q", "d") == expected(kwargs, "q", "d")
    assert len(shapes) == 1
    assert render.renders == 1 + len(score_prompts.PROBES)  # rendered for the first instruction only


def test_the_cache_stays_at_its_bound_whatever_else_a_client_varies():
    shapes: dict = {}
    render = Renderer()
    for i in range(1000):
        plugin._cached_shape(shapes, TEMPLATE, {"instruction": f"task {i}", "user": i}, render)
    assert len(shapes) == plugin.MAX_SHAPES
    # the most recently used are kept
    kept = [key for _, key in shapes]
    assert kept == [repr(sorted({"instruction": score_prompts.INSTRUCTION_MARK, "user": i}.items()))
                    for i in range(1000 - plugin.MAX_SHAPES, 1000)]  # fmt: skip
    # a hit moves an entry to the end instead of adding one
    plugin._cached_shape(shapes, TEMPLATE, {"instruction": "again", "user": 1000 - plugin.MAX_SHAPES}, render)
    assert len(shapes) == plugin.MAX_SHAPES and next(reversed(shapes))[1] == kept[0]


def test_no_instruction_has_its_own_skeleton():
    shapes: dict = {}
    render = Renderer()
    for kwargs in ({}, {"instruction": ""}, {"instruction": None}, {"instruction": "Find it"}):
        shape = plugin._cached_shape(shapes, TEMPLATE, kwargs, render)
        assert score_prompts.fill(shape, "q", "d") == Renderer()(kwargs, "q", "d")
    assert len(shapes) == 4


@pytest.mark.parametrize("mark", score_prompts.MARKS)
def test_an_instruction_with_a_placeholder_character_is_built_per_pair(mark):
    shapes: dict = {}
    assert plugin._cached_shape(shapes, TEMPLATE, {"instruction": f"task {mark}"}, Renderer()) is None
    assert shapes == {}
