"""A real vLLM server started by rerank-kit with an API key: every route but /health needs it, the key
never shows in argv, logs or `rerank-kit cmd`, and hostile input gets a 4xx JSON error on every route
the running server registers (read from its /openapi.json) while the server stays healthy (hypothesis
fuzzing); past its bound on requests in flight it answers 429 with Retry-After and /health still answers."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SERVER_FIXTURES, SERVER_SPECS, queued_server
from rerank_kit.recipes import get_recipe

pytestmark = pytest.mark.vllm

KEY = "rk-test-9f2c1d7e8a"
MAX_DOCS = 64
MAX_CHARS = 20_000


def _secured_spec(_, tiny_model, workdir):
    key_file = workdir / "secured-api-key"
    key_file.write_text(KEY + "\n")
    recipe = get_recipe(str(tiny_model("bge-reranker")), family="bge-reranker")
    limits = {"max_documents": MAX_DOCS, "max_document_chars": MAX_CHARS, "max_body_mb": 1}
    return recipe, {"api_key_file": str(key_file), **limits}


@pytest.fixture(scope="module")
def secured(request, server_queue, server_logs):
    """Started through the queue (conftest.ServerQueue), so the `bounded` server below starts during these tests."""
    for server in queued_server(request, server_queue):
        yield server, server_logs / "secured-api-key"


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

    command_lines = _command_lines(server.pid)
    assert command_lines, "the server's processes"
    for line in command_lines:
        assert KEY not in line
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


def _command_lines(pid: int) -> list[str]:
    """The argv (as text) of every process in the process group that ``pid`` leads."""
    lines = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pid:
                lines.append((proc / "cmdline").read_bytes().decode(errors="replace"))
        except (OSError, ValueError):
            continue
    return lines


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


def test_long_documents_are_truncated_or_read_in_windows_not_rejected(secured):
    server, _ = secured
    long_doc = "the model reads only the start of this document " * 300  # far past 512 tokens
    body = {"query": "q", "documents": [long_doc, "short"], "max_chunks_per_doc": 1}  # 1: truncation
    ok = httpx.post(server.url + "/v1/rerank", headers=AUTH, timeout=120, json=body)
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] <= 2 * 512
    # the default: the long document in at most 8 windows of the model's 512 tokens (server.chunking)
    ok = httpx.post(
        server.url + "/v1/rerank", headers=AUTH, timeout=120, json={"query": "q", "documents": [long_doc, "short"]}
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-rerank-kit-chunks"] == "pairs=9; max=8"
    assert 8 * 256 < ok.json()["usage"]["prompt_tokens"] <= 9 * 512


# --- every route the running server registers ----------------------------------------------------------

BODY_METHODS = ("post", "put", "patch")


@pytest.fixture(scope="module")
def openapi(secured) -> dict:
    server, _ = secured
    response = httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _concrete(path: str) -> str:
    """A path with its {parameters} filled in, e.g. /v1/responses/{response_id} -> /v1/responses/x."""
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.fixture(scope="module")
def every_route(openapi) -> list[tuple[str, str]]:
    """(method, path) for every path the app registers: its body methods, or POST when it has none."""
    routes = []
    for path, operations in openapi["paths"].items():
        methods = [m for m in operations if m in BODY_METHODS] or ["post"]
        routes += [(m.upper(), _concrete(path)) for m in methods]
    paths = {p for _, p in routes}
    # The routes issue 13 found open; they must be among those read from the app, or the app changed.
    assert {"/v1/rerank", "/rerank", "/score", "/invocations", "/pooling", "/tokenize"} <= paths, sorted(paths)
    return routes


@pytest.fixture(scope="module")
def body_routes(openapi) -> list[tuple[str, str]]:
    """(method, path) for the operations that read a JSON body: those that declare one, and /invocations
    (vLLM's SageMaker route reads its body by hand, so its OpenAPI entry declares none)."""
    routes = [
        (method.upper(), _concrete(path))
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        if method in BODY_METHODS and ("requestBody" in operation or path == "/invocations")
    ]
    assert ("POST", "/invocations") in routes and ("POST", "/pooling") in routes
    return routes


def _error_message(response: httpx.Response) -> str:
    error = response.json()
    return (
        error["error"]["message"]
        if isinstance(error.get("error"), dict)
        else error.get("detail") or error.get("message")
    )


HOSTILE_BODIES = {
    "too many documents": json.dumps({"query": "q", "documents": ["d"] * (MAX_DOCS + 1)}).encode(),
    "too many inputs": json.dumps({"input": ["d"] * (MAX_DOCS + 1)}).encode(),
    "a too long input": json.dumps({"input": "x" * (MAX_CHARS + 1)}).encode(),
    "a too long prompt": json.dumps({"prompt": "x" * (MAX_CHARS + 1)}).encode(),
    "a too long message": json.dumps({"messages": [{"role": "user", "content": "x" * (MAX_CHARS + 1)}]}).encode(),
    "a body over the size limit": json.dumps({"input": "x"}).encode() + b" " * (1 << 20),
    "100,000 nested [": b"[" * 100_000,
    "100,000 nested [ in a field": b'{"input": ' + b"[" * 100_000,
    "not JSON": b"{'query': 'q'}",
}


@pytest.mark.parametrize("what", list(HOSTILE_BODIES))
def test_every_route_refuses_hostile_bodies_with_a_4xx_json_error(secured, every_route, what):
    server, _ = secured
    body = HOSTILE_BODIES[what]
    with httpx.Client(base_url=server.url, headers={**AUTH, "Content-Type": "application/json"}, timeout=120) as client:
        for method, path in every_route:
            response = client.request(method, path, content=body)
            assert 400 <= response.status_code < 500, (what, method, path, response.status_code, response.text[:300])
            assert _error_message(response), (what, method, path, response.text[:300])
        assert client.get("/health").status_code == 200
        ok = client.post("/v1/rerank", json=RERANK)
        assert ok.status_code == 200 and len(ok.json()["results"]) == 2


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
@given(body=st.one_of(malformed_bodies.map(str.encode), invalid_utf8), data=st.data())
def test_malformed_and_extreme_payloads_get_a_4xx_json_error(secured, body_routes, body, data):
    server, _ = secured
    method, path = data.draw(st.sampled_from(body_routes), label="route")
    response = httpx.request(
        method, server.url + path, content=body, timeout=120, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (path, response.status_code, body[:200], response.text[:300])
    assert _error_message(response)
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200


def test_server_still_serves_after_the_fuzzing(secured):
    server, _ = secured
    ok = httpx.post(server.url + "/v1/rerank", json=RERANK, headers=AUTH, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


# --- the key given the vLLM way, and admission control ------------------------------------------------------

VLLM_WAY_KEY = "rk-vllm-way-4b7e0c2d"
BOUND = 2


def _bounded_spec(_, tiny_model, __):
    """A server started with `-- --api-key K` (vLLM's own flag) and at most 2 requests in flight."""
    recipe = get_recipe(str(tiny_model("bge-reranker")), family="bge-reranker")
    return recipe, {"max_in_flight": BOUND, "extra_args": ("--max-num-seqs", "64", "--api-key", VLLM_WAY_KEY)}


SERVER_SPECS.update({"secured": _secured_spec, "bounded": _bounded_spec})
SERVER_FIXTURES.update({"secured": lambda _: ("secured", None), "bounded": lambda _: ("bounded", None)})


@pytest.fixture(scope="module")
def bounded(request, server_queue):
    yield from queued_server(request, server_queue)


def test_a_key_given_after_dashes_is_not_in_argv_and_guards_every_route(bounded):
    lines = _command_lines(bounded.pid)
    assert lines and all(VLLM_WAY_KEY not in line for line in lines)
    assert all(VLLM_WAY_KEY not in a for a in bounded.command.argv)
    auth = {"Authorization": f"Bearer {VLLM_WAY_KEY}"}
    for method, path, body in [*ROUTES, ("POST", "/tokenize", {"prompt": "hi"}), ("POST", "/invocations", RERANK)]:
        denied = httpx.request(method, bounded.url + path, json=body, timeout=60)
        assert denied.status_code == 401, path  # vLLM's own check would have left /rerank, /metrics, ... open
        allowed = httpx.request(method, bounded.url + path, json=body, headers=auth, timeout=60)
        assert allowed.status_code == 200, (path, allowed.text)


def test_past_the_bound_the_server_sheds_with_retry_after_and_stays_healthy(bounded):
    auth = {"Authorization": f"Bearer {VLLM_WAY_KEY}"}
    body = {"query": "what is vLLM?", "documents": [f"document {i} " + "words " * 60 for i in range(64)]}

    async def burst():
        async with httpx.AsyncClient(base_url=bounded.url, headers=auth, timeout=300) as client:
            rerank = [client.post("/v1/rerank", json=body) for _ in range(16)]
            health = [client.get("/health") for _ in range(4)]
            return await asyncio.gather(*rerank, *health)

    responses = asyncio.run(burst())
    reranks, health = responses[:16], responses[16:]
    statuses = sorted(r.status_code for r in reranks)
    assert set(statuses) <= {200, 429} and statuses.count(200) >= BOUND, statuses
    shed = [r for r in reranks if r.status_code == 429]
    assert shed, "16 concurrent requests against a bound of 2: some must be shed"
    for response in shed:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "RateLimitError"
    assert all(r.status_code == 200 for r in health)
    ok = httpx.post(bounded.url + "/v1/rerank", json=RERANK, headers=auth, timeout=60)
    assert ok.status_code == 200
