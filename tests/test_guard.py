"""rerank_kit.guard's own logic, on a minimal ASGI app (the real-vLLM checks are in test_security.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rerank_kit.errors import ConfigError
from rerank_kit.guard import Limits, RejectedRequest, RerankKitGuard, check_scoring_body
from rerank_kit.launcher import ServeOptions, build_command
from rerank_kit.recipes import get_recipe


async def echo_app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"echo": body.decode("utf-8", "replace")}).encode()})


def call(monkeypatch, method, path, *, key=None, env_key="sekret", **kwargs):
    if env_key:
        monkeypatch.setenv("VLLM_API_KEY", env_key)
    else:
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.setenv("RERANK_KIT_MAX_DOCUMENTS", "3")
    monkeypatch.setenv("RERANK_KIT_MAX_DOCUMENT_CHARS", "20")
    monkeypatch.setenv("RERANK_KIT_MAX_BODY_BYTES", "1000")
    guard = RerankKitGuard(echo_app)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/score", "/metrics", "/v1/models", "/tokenize", "/docs"])
def test_every_route_but_health_needs_the_key(monkeypatch, path):
    denied = call(monkeypatch, "GET", path)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "AuthenticationError"
    assert call(monkeypatch, "GET", path, key="wrong").status_code == 401
    assert call(monkeypatch, "GET", path, key="sekret").status_code == 200
    assert call(monkeypatch, "GET", "/health").status_code == 200


def test_without_a_key_nothing_is_authenticated(monkeypatch):
    assert call(monkeypatch, "GET", "/metrics", env_key=None).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"query": "q", "documents": ["a"] * 4}, 413, "at most 3"),
        ({"query": "q", "documents": ["x" * 21]}, 413, "documents[0] has 21 characters"),
        ({"query": "x" * 21, "documents": ["a"]}, 413, "query[0] has 21"),
        ({"queries": ["q"], "documents": [{"content": [{"type": "text", "text": "y" * 30}]}]}, 413, "documents[0]"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_scoring_limits(monkeypatch, body, status, needle):
    response = call(monkeypatch, "POST", "/v1/rerank", key="sekret", json=body)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


def test_invalid_utf8_and_json_are_clear_400s(monkeypatch):
    bad = call(monkeypatch, "POST", "/score", key="sekret", content=b'{"query": "\xff\xfe"}')
    assert bad.status_code == 400 and "UTF-8" in bad.json()["error"]["message"]
    broken = call(monkeypatch, "POST", "/score", key="sekret", content=b'{"query": ')
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


def test_oversized_bodies_are_refused_before_reading_them_all(monkeypatch):
    response = call(monkeypatch, "POST", "/rerank", key="sekret", content=b"x" * 5000)
    assert response.status_code == 413 and "at most 1,000" in response.json()["error"]["message"]


def test_accepted_bodies_reach_the_app_unchanged(monkeypatch):
    body = {"query": "q", "documents": ["a", "b"]}
    response = call(monkeypatch, "POST", "/v1/rerank", key="sekret", json=body)
    assert response.status_code == 200 and json.loads(response.json()["echo"]) == body


def test_limits_default_when_unset(monkeypatch):
    for name in ("RERANK_KIT_MAX_DOCUMENTS", "RERANK_KIT_MAX_DOCUMENT_CHARS", "RERANK_KIT_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    assert Limits.from_env() == Limits()
    with pytest.raises(RejectedRequest):
        check_scoring_body(json.dumps({"documents": ["d"] * 1001}).encode(), Limits())


def test_non_local_bind_needs_a_key_or_insecure(monkeypatch):
    recipe = get_recipe("BAAI/bge-reranker-base")
    with pytest.raises(ConfigError, match="without an API key"):
        build_command(recipe, ServeOptions(host="0.0.0.0"), machine=None)
    build_command(recipe, ServeOptions(host="0.0.0.0", insecure=True), machine=None)
    monkeypatch.setenv("RERANK_KIT_API_KEY", "k")
    build_command(recipe, ServeOptions(host="0.0.0.0", api_key_env="RERANK_KIT_API_KEY"), machine=None)


def test_the_guard_is_always_loaded_and_limits_travel_by_environment():
    cmd = build_command(
        get_recipe("BAAI/bge-reranker-base"),
        ServeOptions(max_documents=50, max_document_chars=1000, max_body_mb=2),
        machine=None,
    )
    assert cmd.argv[cmd.argv.index("--middleware") + 1] == "rerank_kit.guard.RerankKitGuard"
    assert cmd.env["RERANK_KIT_MAX_DOCUMENTS"] == "50"
    assert cmd.env["RERANK_KIT_MAX_BODY_BYTES"] == str(2 << 20)
