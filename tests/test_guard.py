"""rerank_kit.guard's own logic, on a minimal ASGI app (the real-vLLM checks are in test_security.py)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import httpx
import pytest

from rerank_kit.errors import ConfigError
from rerank_kit.launcher import ServeOptions, build_command
from rerank_kit.launcher.machine import GiB, Machine
from rerank_kit.recipes import get_recipe
from rerank_kit.server import parsed_body
from rerank_kit.server.guard import Limits, RejectedRequest, RerankKitGuard, check_body


async def _body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def echo_app(scope, receive, send):
    body = await _body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"echo": body.decode("utf-8", "replace")}).encode()})


SMALL_LIMITS = {
    "RERANK_KIT_MAX_DOCUMENTS": "3",
    "RERANK_KIT_MAX_DOCUMENT_CHARS": "20",
    "RERANK_KIT_MAX_BODY_BYTES": "1000",
}


def make_guard(monkeypatch, app=echo_app, *, env_key="sekret", **env):
    """A guard around ``app`` with the small test limits, ``env`` (RERANK_KIT_* names) over them."""
    if env_key:
        monkeypatch.setenv("VLLM_API_KEY", env_key)
    else:
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv("RERANK_KIT_MAX_IN_FLIGHT", raising=False)
    for name, value in {**SMALL_LIMITS, **env}.items():
        monkeypatch.setenv(name, value)
    return RerankKitGuard(app)


def client_for(guard):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t")


def call(monkeypatch, method, path, *, key=None, env_key="sekret", env=None, **kwargs):
    guard = make_guard(monkeypatch, env_key=env_key, **(env or {}))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))

    async def go():
        async with client_for(guard) as client:
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
        check_body(json.dumps({"documents": ["d"] * 1001}).encode(), Limits())


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


# --- limits by body, on every route ------------------------------------------------------------------

AUTH = {"Authorization": "Bearer sekret"}


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/invocations", {"query": "q", "documents": ["a"] * 4}, "4 documents in one request; this server accepts"),
        ("/invocations", {"query": "x" * 21, "documents": ["a"]}, "query[0] has 21 characters"),
        ("/invocations", {"query": "q", "documents": [{"text": "y" * 21}]}, "documents[0] has 21"),
        ("/v2/rerank", {"query": "q", "documents": ["a", "b", "x" * 21]}, "documents[2] has 21"),
        ("/pooling", {"input": ["a"] * 4}, "4 input in one request"),
        ("/pooling", {"input": "x" * 21}, "input[0] has 21"),
        ("/classify", {"input": ["a"] * 4}, "4 input"),
        ("/v1/embeddings", {"input": ["a", "b", "x" * 21]}, "input[2] has 21"),
        ("/v1/embeddings", {"input": [[1, 2]] * 4}, "4 input"),  # four tokenized inputs
        ("/v1/embeddings", {"input": [1, "a", "b", "c"]}, "4 input"),  # not token ids: a number among texts
        (
            "/v1/embeddings",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 21}]}]},
            "messages[0]",
        ),
        ("/v2/embed", {"texts": ["a"] * 4}, "4 texts"),
        ("/tokenize", {"prompt": "x" * 21}, "prompt[0] has 21"),
        ("/tokenize", {"messages": [{"role": "user", "content": "x" * 21}]}, "messages[0] has 21"),
        ("/v1/completions", {"prompt": ["a"] * 4}, "4 prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 21}]}, "messages[0] has 21"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}] * 4}, "4 messages"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 4}]},
            "messages[0] has a list of 4 content",
        ),
        ("/v1/messages", {"system": "x" * 21, "messages": []}, "system[0] has 21"),
        (
            "/v1/responses",
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x" * 21}]}]},
            "input[0]",
        ),
        ("/some/route/vllm/adds/later", {"input": "x" * 21}, "input[0] has 21"),
    ],
)
def test_every_route_is_bounded_by_what_its_body_carries(monkeypatch, path, body, needle):
    response = call(monkeypatch, "POST", path, key="sekret", json=body)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert needle in error["message"]
    assert (error["type"], error["code"]) == ("RequestTooLargeError", 413) and error["param"]


def test_put_and_patch_bodies_are_checked_too(monkeypatch):
    for method in ("PUT", "PATCH"):
        assert call(monkeypatch, method, "/future", key="sekret", json={"input": ["a"] * 4}).status_code == 413


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"prompt": list(range(50))}),  # token ids are not documents
        ("/v1/embeddings", {"input": "short", "model": "m" * 50}),  # only texts count, not the model name
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ["s"] * 10}),
        (  # an image is bounded by the body size, not by the characters of a text
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "d" * 100}}]}]},
        ),
        ("/some/route", {"a": [[[[[[[[[[1]]]]]]]]]]}),
    ],
)
def test_bodies_within_the_limits_reach_the_app_byte_for_byte(monkeypatch, path, body):
    raw = json.dumps(body, indent=1).encode()  # whitespace the app must see unchanged
    response = call(monkeypatch, "POST", path, key="sekret", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["echo"] == raw.decode()


@pytest.mark.parametrize(
    ("content_type", "raw", "status"),
    [
        ("application/json", b"hello", 400),
        ("application/json; charset=utf-8", b"{'query': 1}", 400),
        ("application/vnd.api+json", b"nope", 400),
        (None, b"[1, 2", 400),  # no content type, but it starts like JSON: FastAPI would parse it
        ("text/plain", b'{"input": ["a", "b", "c", "d"]}', 413),  # Starlette's request.json() ignores the type
        ("text/plain", b"hello", 200),
        ("multipart/form-data; boundary=x", b"--x\r\n{", 200),
        ("application/json", b"", 200),  # POST /reset_prefix_cache and friends carry no body
        ("application/json", b"  \n", 200),
    ],
)
def test_json_is_recognised_by_type_or_by_its_first_byte(monkeypatch, content_type, raw, status):
    headers = {"Content-Type": content_type} if content_type else {}
    response = call(monkeypatch, "POST", "/pooling", key="sekret", content=raw, headers=headers)
    assert response.status_code == status, response.text
    if status == 400:
        assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # past orjson's own limit (1024)
        b'{"input": ' + b"[" * 100_000,
        b'{"input": ' + b"[" * 100 + b"]" * 100 + b"}",  # within orjson's, past the guard's
        b'{"prompt": [1, 2, ' + b"[" * 100 + b"]" * 100 + b"]}",  # hidden among token ids
        b'{"model": {"a": ' * 70 + b"1" + b"}" * 140,
    ],
)
def test_deep_nesting_is_a_400_not_a_recursion_error(monkeypatch, raw):
    response = call(
        monkeypatch, "POST", "/invocations", key="sekret", content=raw, env={"RERANK_KIT_MAX_BODY_BYTES": "1000000"}
    )
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["error"]["message"]


def test_a_checker_that_throws_answers_400_not_500(monkeypatch):
    from rerank_kit.server import bodycheck

    def broken(self, body):
        raise RecursionError("the checker itself failed")

    monkeypatch.setattr(bodycheck._TextCheck, "body", broken)
    response = call(monkeypatch, "POST", "/v1/rerank", key="sekret", json={"query": "q", "documents": ["a"]})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "the request body could not be checked (RecursionError)",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


# --- admission ---------------------------------------------------------------------------------------

RERANK = {"query": "q", "documents": ["a", "b"]}


def test_past_the_bound_requests_get_429_with_retry_after_and_health_still_answers(monkeypatch):
    async def go():
        gate = asyncio.Event()

        async def slow(scope, receive, send):
            if scope["path"] not in ("/health", "/metrics"):
                await gate.wait()
            await echo_app(scope, receive, send)

        guard = make_guard(monkeypatch, slow, RERANK_KIT_MAX_IN_FLIGHT="2")
        async with client_for(guard) as client:
            held = [asyncio.create_task(client.post("/v1/rerank", json=RERANK, headers=AUTH)) for _ in range(2)]
            while guard.admission.in_flight < 2:
                await asyncio.sleep(0.001)
            shed = await client.post("/pooling", json={"input": "a"}, headers=AUTH)
            health = await client.get("/health")
            metrics = await client.get("/metrics", headers=AUTH)
            gate.set()
            done = await asyncio.gather(*held)
            after = await client.post("/v1/rerank", json=RERANK, headers=AUTH)
        return guard, shed, health, metrics, done, after

    guard, shed, health, metrics, done, after = asyncio.run(go())
    assert shed.status_code == 429
    assert int(shed.headers["retry-after"]) >= 1
    error = shed.json()["error"]
    assert (error["type"], error["code"]) == ("RateLimitError", 429) and "bound of 2" in error["message"]
    assert health.status_code == 200 and metrics.status_code == 200
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert guard.admission.in_flight == 0
    assert guard.admission.mean_duration is not None


async def _drive(guard, messages, path="/v1/rerank"):
    """Call the guard as a server would, with ``messages`` as what the client sends."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "headers": [(b"authorization", b"Bearer sekret"), (b"content-type", b"application/json")],
    }
    queue = list(messages)
    sent = []

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # a client that never sends more

    async def send(message):
        sent.append(message)

    await guard(scope, receive, send)
    return sent


BODY_MESSAGE = {"type": "http.request", "body": json.dumps(RERANK).encode(), "more_body": False}
DISCONNECT = {"type": "http.disconnect"}


def test_the_in_flight_count_goes_down_when_the_client_disconnects(monkeypatch):
    async def until_disconnect(scope, receive, send):
        while (await receive())["type"] != "http.disconnect":
            pass

    guard = make_guard(monkeypatch, until_disconnect, RERANK_KIT_MAX_IN_FLIGHT="2")
    assert asyncio.run(_drive(guard, [BODY_MESSAGE, DISCONNECT])) == []
    assert guard.admission.in_flight == 0
    # and when it leaves while the body is still being read (the app is never called)
    partial = {"type": "http.request", "body": b'{"query": ', "more_body": True}
    assert asyncio.run(_drive(guard, [partial, DISCONNECT])) == []
    assert guard.admission.in_flight == 0


def test_the_in_flight_count_goes_down_when_the_app_raises_or_is_cancelled(monkeypatch):
    async def broken(scope, receive, send):
        await receive()
        raise RuntimeError("the app failed")

    guard = make_guard(monkeypatch, broken, RERANK_KIT_MAX_IN_FLIGHT="2")
    with pytest.raises(RuntimeError, match="the app failed"):
        asyncio.run(_drive(guard, [BODY_MESSAGE]))
    assert guard.admission.in_flight == 0

    async def forever(scope, receive, send):
        await asyncio.sleep(3600)

    guard = make_guard(monkeypatch, forever, RERANK_KIT_MAX_IN_FLIGHT="2")

    async def cancel():
        task = asyncio.create_task(_drive(guard, [BODY_MESSAGE]))
        while guard.admission.in_flight == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel())
    assert guard.admission.in_flight == 0


def test_rejected_bodies_and_unauthenticated_requests_do_not_hold_a_slot(monkeypatch):
    guard = make_guard(monkeypatch, RERANK_KIT_MAX_IN_FLIGHT="1")
    too_many = {"type": "http.request", "body": json.dumps({"documents": ["a"] * 4}).encode(), "more_body": False}
    sent = asyncio.run(_drive(guard, [too_many]))
    assert sent[0]["status"] == 413 and guard.admission.in_flight == 0
    assert guard.admission.mean_duration is None  # only requests the app served shape Retry-After


def test_without_a_bound_nothing_is_counted(monkeypatch):
    assert make_guard(monkeypatch).admission is None
    assert make_guard(monkeypatch, RERANK_KIT_MAX_IN_FLIGHT="0").admission is None


def test_retry_after_spreads_a_burst_and_decays():
    from rerank_kit.server.guard import _Admission, retry_after

    assert retry_after(2.0, 10, 4) == 5  # ceil(2 s x 10 shed / 4 slots)
    assert retry_after(0.001, 1, 8) == 1  # at least 1 s
    assert retry_after(30.0, 100, 2) == 60  # at most 60 s
    admission = _Admission(2)
    admission.in_flight = 2
    for seconds in (1.0, 3.0):
        admission.done(seconds)
    assert admission.mean_duration == pytest.approx(1.4)  # 1.0 + 0.2 x (3.0 - 1.0)
    admission.mean_duration = 2.0
    burst = [admission.shed(100.0) for _ in range(4)]
    assert burst == [1, 2, 3, 4]  # the n-th shed comes back after about n slots have freed
    assert admission.shed(100.0 + 60) == 1  # a minute later (30 mean durations) the excess has decayed
    admission.in_flight = 1
    assert admission.shed(200.0) is None


def test_max_in_flight_travels_by_environment_like_the_other_limits():
    assert Limits(max_in_flight=32).to_env() == {"RERANK_KIT_MAX_IN_FLIGHT": "32"}
    assert Limits(max_in_flight=0).to_env() == {"RERANK_KIT_MAX_IN_FLIGHT": "0"}  # asked for: no bound
    assert Limits().to_env() == {}
    assert Limits.from_env({"RERANK_KIT_MAX_IN_FLIGHT": "32"}) == Limits(max_in_flight=32)
    assert ServeOptions(max_in_flight=5).limits().max_in_flight == 5
    with pytest.raises(ConfigError, match="--max-in-flight"):
        ServeOptions(max_in_flight=-1)


# --- the default bound, chosen from the machine ----------------------------------------------------------

SMALL_CPU = Machine(cpu_count=2, cpu_flags=frozenset(), total_memory=24 * GiB, available_memory=20 * GiB, gpus=0)
BIG_CPU = Machine(cpu_count=16, cpu_flags=frozenset(), total_memory=64 * GiB, available_memory=60 * GiB, gpus=0)
GPU_BOX = Machine(cpu_count=32, cpu_flags=frozenset(), total_memory=256 * GiB, available_memory=200 * GiB, gpus=4)


@pytest.mark.parametrize(
    ("machine", "asked", "expected"),
    [(SMALL_CPU, None, "8"), (BIG_CPU, None, "64"), (GPU_BOX, None, "256"), (SMALL_CPU, 3, "3"), (GPU_BOX, 0, "0")],
)
def test_the_bound_is_chosen_for_the_machine_printed_with_why_and_kept_out_of_argv(machine, asked, expected):
    cmd = build_command(
        get_recipe("BAAI/bge-reranker-base"), ServeOptions(max_in_flight=asked), vllm_version="0.32.0", machine=machine
    )
    assert cmd.env["RERANK_KIT_MAX_IN_FLIGHT"] == expected
    choice = {c.name: c for c in cmd.choices}["RERANK_KIT_MAX_IN_FLIGHT"]
    assert choice.value == expected and choice.reason
    assert not any("in-flight" in a or "IN_FLIGHT" in a for a in cmd.argv)


def test_without_machine_facts_a_cpu_command_leaves_the_bound_to_the_guard():
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(), machine=None)
    assert "RERANK_KIT_MAX_IN_FLIGHT" not in cmd.env
    gpu = build_command(get_recipe("BAAI/bge-reranker-base"), ServeOptions(device="cuda"), machine=None)
    assert gpu.env["RERANK_KIT_MAX_IN_FLIGHT"] == "256"


def test_cmd_takes_max_in_flight():
    from typer.testing import CliRunner

    from rerank_kit.cli import app

    result = CliRunner().invoke(app, ["cmd", "BAAI/bge-reranker-base", "--max-in-flight", "12"])
    assert result.exit_code == 0, result.output
    assert "RERANK_KIT_MAX_IN_FLIGHT=12" in result.stdout
    assert "--max-in-flight" not in result.stdout


# --- vLLM's own --api-key, given after -- --------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [("--api-key", "vk-123"), ("--api-key=vk-123",), ("--api_key", "vk-123"), ("--api-ke", "vk-123")],
)
def test_vllm_api_key_after_dashes_never_reaches_argv(extra):
    options = ServeOptions(extra_args=("--max-num-seqs", "8", *extra, "--enforce-eager"))
    assert "vk-123" not in repr(options)
    cmd = build_command(get_recipe("BAAI/bge-reranker-base"), options, machine=None)
    assert "vk-123" not in " ".join(cmd.argv) and "vk-123" not in cmd.shell()
    assert cmd.argv[-3:] == ["--max-num-seqs", "8", "--enforce-eager"]  # the other flags, in order
    assert cmd.environ({})["VLLM_API_KEY"] == "vk-123"
    # handled like rerank-kit's own --api-key: it counts as the key a non-local bind needs
    build_command(get_recipe("BAAI/bge-reranker-base"), replace(options, host="0.0.0.0"), machine=None)


def test_cmd_with_a_vllm_api_key_prints_no_key():
    from typer.testing import CliRunner

    from rerank_kit.cli import app

    result = CliRunner().invoke(app, ["cmd", "BAAI/bge-reranker-base", "--", "--api-key", "vk-123"])
    assert result.exit_code == 0, result.output
    assert "vk-123" not in result.output and 'VLLM_API_KEY="$RERANK_KIT_API_KEY"' in result.stdout


def test_two_sources_of_a_key_are_refused_unless_they_agree(tmp_path):
    assert ServeOptions(api_key="same", extra_args=("--api-key", "same")).api_key == "same"
    with pytest.raises(ConfigError, match="two different keys"):
        ServeOptions(api_key="mine", extra_args=("--api-key", "theirs"))
    key_file = tmp_path / "key"
    key_file.write_text("k\n")
    with pytest.raises(ConfigError, match="--api-key-file"):
        ServeOptions(api_key_file=str(key_file), extra_args=("--api-key=theirs",))
    with pytest.raises(ConfigError, match="2 different keys"):
        ServeOptions(extra_args=("--api-key", "a", "b"))
    with pytest.raises(ConfigError, match="2 different keys"):
        ServeOptions(extra_args=("--api-key", "a", "--api-key", "b"))
    with pytest.raises(ConfigError, match="needs a key"):
        ServeOptions(extra_args=("--api-key", "--max-num-seqs", "8"))
    with pytest.raises(ConfigError, match="needs a key"):
        ServeOptions(extra_args=("--api-key=",))
    # not vLLM's key flag: passed on
    assert ServeOptions(extra_args=("--api-server-count", "2")).extra_args == ("--api-server-count", "2")


def test_third_party_shapes_reach_vllm_normalised_and_other_bodies_byte_for_byte(monkeypatch):
    """langchain-cohere's "max_tokens_per_doc": null (vLLM: 400) is dropped before the app sees the body."""
    seen = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"], seen["headers"] = message["body"], dict(scope["headers"])
        await echo_app(scope, lambda: _done(message), send)

    async def _done(message):
        return message

    sent = {"model": "m", "query": "q", "documents": ["a"], "top_n": None, "max_tokens_per_doc": None}
    guard = make_guard(monkeypatch, app)

    async def go(path, body):
        async with client_for(guard) as client:
            return await client.post(path, content=body, headers={"Authorization": "Bearer sekret"})

    raw = json.dumps(sent).encode()
    response = asyncio.run(go("/v2/rerank", raw))
    assert response.status_code == 200
    assert json.loads(seen["body"]) == {"model": "m", "query": "q", "documents": ["a"]}
    assert seen["headers"][b"content-length"] == str(len(seen["body"])).encode()
    # the same body on a route that is not a rerank route is not touched
    asyncio.run(go("/v1/score", raw))
    assert seen["body"] == raw


# --- the parsed body, handed on (server.parsed_body) ------------------------------------------------------


def test_the_guard_hands_on_the_object_the_forwarded_bytes_encode(monkeypatch):
    """The scope carries what the app's body parses to: the body as sent, or as the guard rewrote it."""
    seen = []

    async def app(scope, receive, send):
        body = await _body(receive)
        seen.append((scope.get(parsed_body.PARSED_KEY), json.loads(body)))
        await echo_app(scope, _replayed(body), send)

    guard = make_guard(monkeypatch, app, env_key="")
    cohere_v1 = {"query": "q", "documents": [{"text": "a"}, {"text": "b"}], "model": "m", "return_documents": True}
    bodies = [
        {"query": "q", "documents": ["a", "b"], "top_n": 1, "x": 1.5e300},
        cohere_v1,  # a third-party client's shape: rewritten for vLLM (server.normalize)
        {"input": ["short"], "model": "m"},
    ]

    async def go():
        async with client_for(guard) as client:
            for path, body in zip(("/v1/rerank", "/v1/rerank", "/v1/embeddings"), bodies, strict=True):
                assert (await client.post(path, json=body)).status_code == 200

    asyncio.run(go())
    assert [handed == parsed for handed, parsed in seen] == [True, True, True]
    assert seen[1][0] != cohere_v1  # rewritten, and the handed object is the rewritten one
    text = call(monkeypatch, "POST", "/v1/rerank", env_key="", content=b"plain", headers={"Content-Type": "text/plain"})
    assert text.status_code == 200  # not JSON: nothing parsed, nothing handed


def _replayed(body):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def test_starlettes_request_json_returns_the_handed_object_and_nothing_else_changes(monkeypatch):
    from starlette.requests import Request

    monkeypatch.setattr(Request, "json", Request.json)  # undone after the test
    off: list[str] = []
    assert parsed_body.install(off) and not off
    assert parsed_body.install(off)  # once is enough: a second call keeps the first patch

    async def read(scope, body):
        request = Request(scope, _replayed(body))
        return await request.json()

    handed = {"query": "q", "documents": ["a"]}
    scope = {"type": "http", "method": "POST", "headers": [], parsed_body.PARSED_KEY: handed}
    assert asyncio.run(read(scope, json.dumps(handed).encode())) is handed
    plain = {"type": "http", "method": "POST", "headers": []}
    assert asyncio.run(read(plain, b'{"a": [1, 2.5]}')) == {"a": [1, 2.5]}


def test_another_request_json_body_is_left_alone_and_said(monkeypatch):
    from starlette.requests import Request

    async def json_of_another_starlette(self):
        return "not the verified body"

    monkeypatch.setattr(Request, "json", json_of_another_starlette)
    off: list[str] = []
    assert not parsed_body.install(off)
    assert Request.json is json_of_another_starlette
    assert off and "Starlette's Request.json is" in off[0] and "c666e5c7f52d3139 (Starlette 1.10.0)" in off[0]
