"""``server.responses``: /rerank and /score answers built from dicts say what vLLM's own builders say.

Each case calls vLLM's builder (``ServingScores._request_output_to_*_response`` of the installed vLLM) and the
plugin's on the same engine outputs (vLLM's ``PoolingRequestOutput`` around real tensors) and compares the JSON
each answers with, parsed: keys in the same order, the same numbers. Served for real in test_families.py (its
parity tests go through it; ``test_prompts_are_built_per_request`` checks the start-up line).
"""

from __future__ import annotations

import inspect
import json
import math

import pytest

from rerank_kit.server import compat, responses

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def builders():
    """(vLLM's rerank builder, vLLM's score builder, the plugin's, the plugin's); the class restored after."""
    serving = pytest.importorskip("vllm.entrypoints.pooling.scoring.serving")
    cls = serving.ServingScores
    names = ("_request_output_to_rerank_response", "_request_output_to_score_response")
    found = {n: vars(cls)[n] for n in names}  # the plugin's already, where this process registered it before
    own = {n: inspect.unwrap(fn) for n, fn in found.items()}
    for name, fn in own.items():
        setattr(cls, name, fn)
    off: list[str] = []
    if not responses.install(off):
        pytest.skip(f"not installed on this vLLM: {off}")
    ours = (cls._request_output_to_rerank_response, cls._request_output_to_score_response)
    yield own["_request_output_to_rerank_response"], own["_request_output_to_score_response"], *ours
    for name, fn in found.items():
        setattr(cls, name, fn)


def outputs(scores, dtype="float32", shape=(1,)):
    import torch
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    tensor = getattr(torch, dtype)
    return [
        PoolingRequestOutput(f"r-{i}", PoolingOutput(torch.full(shape, s, dtype=tensor)), [1, 2], 0, True)
        for i, s in enumerate(scores)
    ]


def body(response) -> tuple[list, dict]:
    """The answer's JSON, parsed keeping key order (a list of pairs at every level), and its headers."""
    parsed = json.loads(response.body, object_pairs_hook=list)
    return parsed, {k: v for k, v in response.headers.items() if k != "content-length"}


DOCS = ["vLLM is an inference engine.", "Paris is in France.", 'Ünïcödé and "quotes"\n', "tie", "tie again"]
# ties (0.25 twice: the stable sort keeps their order), a tiny and a negative logit, a long fraction
SCORES = [0.25, 0.9, 1e-05, 0.25, -3.0000001]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("top_n", [5, 2, 1])
def test_a_rerank_answer_is_vllms_own_json(builders, dtype, top_n):
    vllm_rerank, _, ours, _ = builders
    args = ("rerank-abc", "tiny/model", DOCS, top_n, 123)
    theirs = vllm_rerank(None, outputs(SCORES, dtype), *args)
    mine = ours(None, outputs(SCORES, dtype), *args)
    assert type(mine) is not type(theirs)  # the plugin's path answered, not vLLM's
    assert body(mine) == body(theirs)
    assert [r[0][1] for r in body(mine)[0][3][1]] == [1, 0, 3, 2, 4][:top_n]  # results by score, ties kept in order


@pytest.mark.parametrize("shape", [(1,), ()])
def test_a_score_answer_is_vllms_own_json(builders, shape):
    _, vllm_score, _, ours = builders
    args = ("score-abc", 1_700_000_000, "tiny/model", 77)
    theirs = vllm_score(None, outputs(SCORES, shape=shape), *args)
    mine = ours(None, outputs(SCORES, shape=shape), *args)
    assert type(mine) is not type(theirs)
    assert body(mine) == body(theirs)


def test_what_it_does_not_build_goes_to_vllms_own_code(builders):
    vllm_rerank, _, ours_rerank, ours_score = builders
    # a document that is not text (an image's content parts): vLLM's models validate those
    docs = [{"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}, "text"]
    args = ("rerank-abc", "tiny/model", docs, 2, 9)
    assert type(ours_rerank(None, outputs([0.5, 0.4]), *args)) is type(vllm_rerank(None, outputs([0.5, 0.4]), *args))
    # more than one number per pair: vLLM's own error
    with pytest.raises(ValueError, match="pooled_data should be a scalar score"):
        ours_score(None, outputs([0.1, 0.2], shape=(2,)), "score-abc", 0, "m", 1)
    # not a finite number: vLLM's own answer to it (the json module refuses NaN), not orjson's null
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        ours_score(None, outputs([0.1, math.nan]), "score-abc", 0, "m", 1)
    assert responses.pair_scores(outputs([0.5, math.inf])) is None
    assert responses.pair_scores([]) is None


def test_outputs_without_an_error_field_are_read_as_vllm_0_31_reads_them(builders):
    """vLLM 0.30-0.31's PoolingRequestOutput has no ``error`` (its ScoringRequestOutput.from_base reads none)."""
    import types

    import torch

    old = [types.SimpleNamespace(outputs=types.SimpleNamespace(data=torch.tensor([s]))) for s in (0.5, -1.25)]
    assert responses.pair_scores(old) == [0.5, -1.25]


def test_installed_only_on_the_bodies_it_was_verified_on(builders, monkeypatch):
    import dataclasses

    from vllm.entrypoints.pooling.scoring.serving import ServingScores

    table = tuple(
        dataclasses.replace(r, pins=(("0" * 16, "none"),)) if r.key == "plugin.score_response" else r
        for r in compat.REQUIREMENTS
    )
    monkeypatch.setattr(compat, "REQUIREMENTS", table)
    _, vllm_score, _, _ = builders
    monkeypatch.setattr(ServingScores, "_request_output_to_rerank_response", builders[0])
    monkeypatch.setattr(ServingScores, "_request_output_to_score_response", vllm_score)
    off: list[str] = []
    assert not responses.install(off)
    [said] = off
    assert said.startswith("scoring responses built from dicts: ServingScores._request_output_to_score_response is "
                           "not a body rerank-kit was verified on")  # fmt: skip
    assert ServingScores._request_output_to_score_response is vllm_score
