"""rerank_kit.launcher.reference follows the authors' packages exactly: same token ids, same scores.

The packages run in their own environment (tests/reference_env.py); set RERANK_KIT_REFERENCE_PYTHON
to its interpreter (`make test` and .ci/run do).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rerank_kit.launcher.reference import load_reference

PAIRS = [
    ("What is vLLM?", "vLLM is a fast and easy-to-use library for LLM inference and serving."),
    ("how do I bake bread", "Mix flour, water, salt and yeast.\nLet it rise, then bake it!"),
    ("Wer schrieb 'To Kill a Mockingbird'?", "Harper Lee, 1960."),
]
ENV_SCRIPT = Path(__file__).with_name("reference_env.py")


def _package_scores(family: str, model_dir: Path) -> list[dict]:
    python = os.environ.get("RERANK_KIT_REFERENCE_PYTHON")
    if not python:
        pytest.skip("set RERANK_KIT_REFERENCE_PYTHON (python tests/reference_env.py ensure)")
    out = subprocess.run(
        [python, str(ENV_SCRIPT), "score", family, str(model_dir), json.dumps(PAIRS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mxbai_reference_equals_the_mxbai_rerank_package(tiny_model):
    model_dir = tiny_model("mxbai-rerank-v2")
    package = _package_scores("mxbai-rerank-v2", model_dir)
    ours = load_reference("mxbai-rerank-v2", str(model_dir))
    for (query, document), expected in zip(PAIRS, package, strict=True):
        assert ours.token_ids(query, document) == expected["ids"]
    for got, expected in zip(ours.scores(PAIRS), package, strict=True):
        assert got == pytest.approx(expected["score"], abs=1e-4)


def test_gemma_reference_equals_flagembedding(tiny_model):
    model_dir = tiny_model("bge-reranker-v2-gemma")
    package = _package_scores("bge-reranker-v2-gemma", model_dir)
    ours = load_reference("bge-reranker-v2-gemma", str(model_dir))
    for got, expected in zip(ours.scores(PAIRS), package, strict=True):
        assert got == pytest.approx(expected["score"], abs=1e-4)
