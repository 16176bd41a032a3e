"""A real vLLM server started by rerank-kit with an API key: every route but /health needs it, the key
never shows in argv, logs or `rerank-kit cmd`, and hostile input gets a 4xx JSON error while the
server stays healthy (hypothesis fuzzing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import start_server
from rerank_kit.recipes import get_recipe

pytestmark = pytest.mark.vllm

KEY = "rk-test-9f2c1d7e8a"
MAX_DOCS = 64
MAX_CHARS = 20_000


@pytest.fixture(scope="module")
def secured(tiny_model, server_logs, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(KEY + "\n")
    recipe = get_recipe(str(tiny_model("bge-reranker")), family="bge-reranker")
    with start_server(
        recipe,
        server_logs,
        api_key_file=str(key_file),
        max_documents=MAX_DOCS,
        max_document_chars=MAX_CHARS,
        max_body_mb=1,
    ) as server:
        yield server, key_file


AUTH = {"Authorization": f"Bearer {KEY}"}
RERANK = {"query": "what is vLLM?", "documents": ["an inference engine", "a fruit"]}
SCORE = {"queries": "what is vLLM?", "documents": ["an inference engine", "a fruit"]}
ROUTES = [
    ("POST", "/rerank", RERANK),
    ("POST", "/v1/rerank", RERANK),
    ("POST", "/score", SCORE),
    ("POST", "/v1/score", SCORE),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_routes_need_the_key(secured, method, path, body):
    server, _ = secured
    denied = httpx.request(method, server.url + path, json=body, timeout=60)
    assert denied.status_code == 401, path
    assert denied.json()["error"]["type"] == "AuthenticationError"
    wrong = httpx.request(method, server.url + path, json=body, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert wrong.status_code == 401
    allowed = httpx.request(method, server.url + path, json=body, headers=AUTH, timeout=60)
    assert allowed.status_code == 200, (path, allowed.text)


def test_health_stays_open(secured):
    server, _ = secured
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_the_key_never_appears_in_argv_logs_or_cmd(secured):
    server, key_file = secured
    from rerank_kit import launcher

    pids = [p for p in Path("/proc").glob("[0-9]*") if (p / "stat").exists()]
    group = []
    for proc in pids:
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == server.pid:
                group.append(proc)
        except (OSError, ValueError):
            continue
    assert group, "the server's processes"
    for proc in group:
        assert KEY not in (proc / "cmdline").read_bytes().decode(errors="replace")
    httpx.post(server.url + "/v1/rerank", json=RERANK, headers=AUTH, timeout=60)
    assert KEY not in server.log.read_text(errors="replace")
    assert KEY not in server.command.shell() and "$(cat " in server.command.shell()
    printed = subprocess.run(
        [sys.executable, "-m", "rerank_kit.cli", "cmd", "BAAI/bge-reranker-base", "--api-key-file", str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0 and KEY not in printed.stdout + printed.stderr
    assert launcher.GUARD_MIDDLEWARE in printed.stdout


def test_limits_return_413_with_a_message(secured):
    server, _ = secured
    many = httpx.post(
        server.url + "/v1/rerank", headers=AUTH, timeout=60, json={"query": "q", "documents": ["d"] * 50_000}
    )
    assert many.status_code == 413 and f"at most {MAX_DOCS}" in many.json()["error"]["message"]
    huge = httpx.post(
        server.url + "/v1/rerank", headers=AUTH, timeout=60, json={"query": "q", "documents": ["x" * (2 << 20)]}
    )
    assert huge.status_code == 413


def test_long_documents_are_truncated_not_rejected(secured):
    server, _ = secured
    long_doc = "the model reads only the start of this document " * 300  # far past 512 tokens
    ok = httpx.post(
        server.url + "/v1/rerank", headers=AUTH, timeout=120, json={"query": "q", "documents": [long_doc, "short"]}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] <= 2 * 512


# --- fuzzing ---------------------------------------------------------------------------------------------

texts = st.text(max_size=50)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12
)
not_text = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.lists(json_scalars, max_size=3)
bad_document_lists = (
    st.just([])
    | st.lists(not_text, min_size=1, max_size=4)
    | st.integers()
    | st.dictionaries(texts, json_scalars, max_size=3).filter(lambda d: "content" not in d)
)

malformed_bodies = st.one_of(
    # not an object at all
    st.lists(json_values, max_size=3).map(json.dumps),
    st.sampled_from(["", "{", "null", "[]", '"query"', "{'query': 1}", '{"query": "q", "documents": ["a",]}']),
    # required fields missing or of the wrong type
    st.fixed_dictionaries({"documents": st.lists(texts, min_size=1, max_size=3)}).map(json.dumps),
    st.fixed_dictionaries({"query": texts}).map(json.dumps),
    st.fixed_dictionaries({"query": not_text, "documents": st.lists(texts, min_size=1, max_size=3)}).map(json.dumps),
    st.fixed_dictionaries({"query": texts, "documents": bad_document_lists}).map(json.dumps),
    st.fixed_dictionaries(
        {
            "query": texts,
            "documents": st.lists(texts, min_size=1, max_size=3),
            "top_n": st.integers(max_value=-1) | texts.filter(lambda s: not s.isdigit()),
        }
    ).map(json.dumps),
    # extremes
    st.integers(MAX_DOCS + 1, 50_000).map(lambda n: json.dumps({"query": "q", "documents": ["d"] * n})),
    st.integers(MAX_CHARS + 1, 2 << 20).map(lambda n: json.dumps({"query": "q", "documents": ["x" * n]})),
)
invalid_utf8 = (
    st.binary(min_size=1, max_size=64)
    .filter(lambda b: not _utf8(b))
    .map(lambda b: b'{"query": "' + b + b'", "documents": ["a"]}')
)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    body=st.one_of(malformed_bodies.map(str.encode), invalid_utf8),
    path=st.sampled_from(["/v1/rerank", "/rerank", "/v1/score"]),
)
def test_malformed_and_extreme_payloads_get_a_4xx_json_error(secured, body, path):
    server, _ = secured
    response = httpx.post(
        server.url + path, content=body, timeout=120, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (response.status_code, body[:200], response.text[:300])
    error = response.json()
    message = (
        error["error"]["message"]
        if isinstance(error.get("error"), dict)
        else error.get("detail") or error.get("message")
    )
    assert message
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200


def test_server_still_serves_after_the_fuzzing(secured):
    server, _ = secured
    ok = httpx.post(server.url + "/v1/rerank", json=RERANK, headers=AUTH, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2
