"""Several models side by side: the launcher's fan-out, `up`/`status`/`down` by model, and the client
routing each call to the servers of its model.

MockTransport stands in for servers only where a real one cannot be made to act on demand (a server
going away mid-run, one switched to another model, a gateway without /v1/models). The real thing is
the vllm-marked test at the end: two different tiny models started by `rerank-kit up`, side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import SERVER_START_TIMEOUT
from rerank_kit import AsyncRerankClient, RerankClient, launcher
from rerank_kit.cli import app
from rerank_kit.errors import APIError, ConfigError, ModelNotServedError, NotFoundError, ServeError
from rerank_kit.launcher.machine import GiB, Machine
from rerank_kit.recipes import get_recipe

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
BGE = "BAAI/bge-reranker-base"
M3 = "BAAI/bge-reranker-v2-m3"


# --- launcher: each model's servers on consecutive ports, the machine split among all -------------------


def test_each_model_gets_its_replicas_on_consecutive_ports_and_its_own_gpus():
    gpu_box = Machine(cpu_count=32, cpu_flags=frozenset(), total_memory=512 * GiB, available_memory=500 * GiB, gpus=4)
    commands = launcher.model_commands(
        [get_recipe(BGE), get_recipe(M3)], launcher.ServeOptions(port=9000), 2, machine=gpu_box
    )
    assert [(c.port, c.model_name) for c in commands] == [(9000, BGE), (9001, BGE), (9002, M3), (9003, M3)]
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == ["0", "1", "2", "3"]
    with pytest.raises(ConfigError, match=r"6 servers \(3 models\) x 1 GPUs each need 6 GPUs"):
        launcher.model_commands([get_recipe(BGE), get_recipe(M3), get_recipe(M3 + "x", "bge-reranker")],
                                launcher.ServeOptions(), 2, machine=gpu_box)  # fmt: skip


def test_models_on_a_cpu_share_its_cores_without_overlap():
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    host = Machine(cpu_count=len(cores), cpu_flags=frozenset(), total_memory=8 * GiB, available_memory=8 * GiB, gpus=0)
    one = launcher.model_commands([get_recipe(BGE)], launcher.ServeOptions(), 1, machine=host)[0]
    two = launcher.model_commands([get_recipe(BGE), get_recipe(M3)], launcher.ServeOptions(), 1, machine=host)
    assert "taskset" not in one.argv[0]  # one server has the machine to itself
    if two[0].argv[0].endswith("taskset"):
        pinned = [set(c.argv[2].split(",")) for c in two]
        assert pinned[0] and pinned[1] and not pinned[0] & pinned[1]

    def kv_bytes(command):
        return int(next(c.value for c in command.choices if c.name == "--kv-cache-memory-bytes"))

    assert all(kv_bytes(c) < kv_bytes(one) for c in two)  # each gets a share of the memory, not all of it


@pytest.mark.parametrize(
    ("models", "options", "message"),
    [
        ([BGE, BGE], {}, "given twice"),
        ([BGE, M3], {"served_model_name": "x"}, "--served-model-name names one model"),
    ],
)
def test_ambiguous_fleets_are_refused(models, options, message):
    host = Machine(cpu_count=2, cpu_flags=frozenset(), total_memory=8 * GiB, available_memory=8 * GiB, gpus=2)
    with pytest.raises(ConfigError, match=message):
        launcher.model_commands([get_recipe(m) for m in models], launcher.ServeOptions(**options), 1, machine=host)


def test_family_applies_to_every_model_or_one_per_model():
    assert launcher.families_for("bge-reranker", 2) == ["bge-reranker", "bge-reranker"]
    assert launcher.families_for(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ConfigError, match="--family given 2 times for 3 models"):
        launcher.families_for(["a", "b"], 3)


def test_cmd_prints_every_server_of_every_model_with_the_vllm_flags():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two CPU servers need 2 cores")
    result = runner.invoke(app, ["cmd", BGE, M3, "--port", "9100", "--device", "cpu", "--", "--max-num-seqs", "16"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    argvs = [line.split() for line in lines]
    assert [a[a.index("--model") + 1] for a in argvs] == [BGE, M3]
    assert [a[a.index("--port") + 1] for a in argvs] == ["9100", "9101"]
    assert all(a[-2:] == ["--max-num-seqs", "16"] for a in argvs)  # flags after -- are not taken for models


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", BGE, M3], "use `rerank-kit up MODEL... [--replicas N]`"),
        (["cmd", BGE, M3, "--served-model-name", "x"], "--served-model-name names one model"),
        (["cmd", BGE, M3, "--family", "bge-reranker", "--family", "x", "--family", "y"], "--family given 3 times"),
    ],
)
def test_several_models_where_they_make_no_sense_are_one_line_errors(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1


# --- status and down by model (records of processes of our own, so down stops only what we started) ---


@pytest.fixture
def two_recorded_models():
    """Three recorded servers of two models: sleeping processes of ours, each in its own group."""
    records = []
    for port, model, served in ((47001, "acme/a", "acme/a"), (47002, "acme/a", "acme/a"), (47003, "/m/b", "b")):
        proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
        record = launcher.ServerRecord(port, proc.pid, f"http://127.0.0.1:{port}", model, "", "", 0.0, served)
        record.save()
        records.append((record, proc))
    yield records
    for record, proc in records:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        record.remove()


def test_status_lists_servers_grouped_by_model(two_recorded_models):
    rows = launcher.server_statuses()
    mine = [(r["model"], r["served_as"], r["port"]) for r in rows if 47000 < int(r["port"]) < 47010]
    assert mine == [("acme/a", "acme/a", 47001), ("acme/a", "acme/a", 47002), ("/m/b", "b", 47003)]
    table = runner.invoke(app, ["status"])
    assert table.exit_code == 0, table.output
    assert table.stdout.count("acme/a") == 1  # each model named once, above its servers
    assert "/m/b (as b)" in table.stdout
    only_b = runner.invoke(app, ["status", "b", "--json"])
    assert [row["port"] for row in json.loads(only_b.stdout)] == [47003]


def test_down_model_stops_only_that_models_servers(two_recorded_models):
    result = runner.invoke(app, ["down", "acme/a"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("Stopped acme/a") == 2
    (a1, p1), (_, p2), (b, pb) = two_recorded_models
    assert p1.wait(timeout=30) is not None and p2.wait(timeout=30) is not None
    assert pb.poll() is None and launcher.ServerRecord.load(b.port) is not None
    assert launcher.ServerRecord.load(a1.port) is None
    unknown = runner.invoke(app, ["down", "acme/nope"])
    assert unknown.exit_code == 1
    assert "recorded models:" in unknown.stderr and "/m/b" in unknown.stderr
    with pytest.raises(ServeError, match="acme/nope"):
        launcher.stop_servers(model="acme/nope")


# --- the client: routing by model ---------------------------------------------------------------------


class Fleet:
    """Answers like vLLM servers, each serving the models ``serves[host]`` lists; records what it got."""

    def __init__(self, serves: dict[str, list[str]]):
        self.serves = serves
        self.down: set[str] = set()
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.requests.append(request)
        if host in self.down:
            raise httpx.ConnectError("Connection refused", request=request)
        names = self.serves[host]
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
        body = json.loads(request.content)
        if body["model"] not in names:
            message = f"The model `{body['model']}` does not exist. Valid aliases: {', '.join(names)}."
            error = {"message": message, "type": "NotFoundError", "param": "model", "code": 404}
            return httpx.Response(404, json={"error": error})
        docs = body["documents"]
        results = [{"index": i, "document": {"text": d}, "relevance_score": 1.0 / (i + 1)} for i, d in enumerate(docs)]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        if request.url.path == "/v1/score":
            data = [{"index": i, "object": "score", "score": 0.5} for i in range(len(docs))]
            return httpx.Response(200, json={"model": body["model"], "data": data, "usage": usage})
        return httpx.Response(200, json={"id": host, "model": body["model"], "results": results, "usage": usage})

    def posted_to(self, model: str) -> set[str]:
        return {r.url.host for r in self.requests if r.method == "POST" and json.loads(r.content)["model"] == model}

    def asked(self, host: str) -> int:
        return sum(1 for r in self.requests if r.url.host == host and r.url.path == "/v1/models")


URLS = ["http://a1:8000", "http://a2:8000", "http://b1:8000"]


def routed(fleet: Fleet, **kwargs) -> RerankClient:
    return RerankClient(URLS, transport=httpx.MockTransport(fleet), **kwargs)


def test_calls_go_to_their_models_servers_balanced_and_models_are_asked_once():
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    with routed(fleet) as client:
        for _ in range(20):
            assert client.rerank("q", ["x", "y"], model="A").model == "A"
        assert client.score("q", ["x"], model="B").model == "B"
        assert client.rerank("q", ["x"], model="B").model == "B"
        assert client.models() == ["A", "B"]
    assert fleet.posted_to("A") == {"a1", "a2"}  # balanced across A's servers only
    assert fleet.posted_to("B") == {"b1"}
    # once on first use, once more for models(): never per call
    assert [fleet.asked(h) for h in ("a1", "a2", "b1")] == [2, 2, 2]


def test_a_model_nobody_serves_is_an_error_listing_the_served_ones():
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    with routed(fleet) as client, pytest.raises(ModelNotServedError) as exc:
        client.rerank("q", ["x"], model="A")
        client.rerank("q", ["x"], model="C")
    error = exc.value
    assert isinstance(error, NotFoundError)  # like the 404 one server answers
    assert error.served == {"A": ["http://a1:8000", "http://a2:8000"], "B": ["http://b1:8000"]}
    assert "'C'" in str(error) and "A at http://a1:8000, http://a2:8000" in str(error) and "B at" in str(error)
    assert fleet.posted_to("C") == set()  # refused before sending
    assert [fleet.asked(h) for h in ("a1", "a2", "b1")] == [2, 2, 2]  # asked again before saying so


def test_no_model_named_uses_the_one_served_and_refuses_to_guess_among_several():
    one = Fleet({"a1": ["A", "A-alias"], "a2": ["A"], "b1": ["A"]})
    with routed(one) as client:
        assert client.rerank("q", ["x"]).model == "A"
    several = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    with (
        routed(several) as client,
        pytest.raises(ConfigError, match=r"several models \(A at .*; B at .*\): pass model="),
    ):
        client.rerank("q", ["x"])
    with routed(several, model="B") as client:  # the client's model= (or RERANK_KIT_MODEL) chooses
        assert client.rerank("q", ["x"]).model == "B"


def test_a_failing_server_fails_over_within_its_model_only(sleeps):
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    with routed(fleet, cooldown=60) as client:
        client.rerank("q", ["x"], model="A")  # everyone asked which model it serves
        fleet.down.add("a1")
        for _ in range(10):
            assert client.rerank("q", ["x"], model="A").model == "A"
        assert client.replica_counts()["http://b1:8000"] == 0
    assert "b1" not in fleet.posted_to("A")


def test_a_server_switched_to_another_model_is_asked_again_and_the_call_resent():
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    with routed(fleet) as client:
        client.rerank("q", ["x"], model="A")
        fleet.serves["a1"] = fleet.serves["a2"] = ["C"]  # both switched: A's calls meet 404s
        with pytest.raises(ModelNotServedError, match="C at http://a1:8000, http://a2:8000"):
            for _ in range(5):  # until a call lands on a switched server
                client.rerank("q", ["x"], model="A")
        assert client.rerank("q", ["x"], model="C").model == "C"
        fleet.serves["b1"] = ["C"]  # b1 switched too: its 404 sends the call to C's other servers
        assert client.rerank("q", ["x"], model="C").model == "C"
        fleet.serves["b1"] = ["E"]  # a model no call has met yet: asked for before it is called unknown
        assert client.rerank("q", ["x"], model="E").model == "E"
        assert fleet.posted_to("E") == {"b1"}


def test_a_server_that_went_away_is_asked_again_when_it_comes_back():
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    with routed(fleet, cooldown=0.0) as client:
        client.rerank("q", ["x"], model="A")
        fleet.down.add("b1")
        with pytest.raises(APIError):  # b1 is B's only server
            client.rerank("q", ["x"], model="B", max_retries=0)
        fleet.down.discard("b1")
        fleet.serves["b1"] = ["D"]  # back, serving another model
        assert client.rerank("q", ["x"], model="D").model == "D"
        assert client.rerank("q", ["x"], model="A").model == "A"


def test_a_server_down_at_first_use_does_not_hold_up_the_others(sleeps):
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    fleet.down.add("b1")
    with routed(fleet, cooldown=60) as client:
        assert client.rerank("q", ["x"], model="A").model == "A"
        assert sleeps == []  # routed at once
        with pytest.raises(ModelNotServedError, match=r"could not ask http://b1:8000 \(cannot reach") as exc:
            client.rerank("q", ["x"], model="B", max_retries=2)
    assert len(sleeps) == 2 and all(50 < s <= 60 for s in sleeps)  # waited for b1's cool-down, max_retries times
    assert exc.value.unreachable.keys() == {"http://b1:8000"}


def test_nobody_answering_is_the_connection_error_not_a_missing_model(sleeps):
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})
    fleet.down.update({"a1", "a2", "b1"})
    with routed(fleet) as client, pytest.raises(APIError, match="cannot reach") as exc:
        client.rerank("q", ["x"], model="A", max_retries=1)
    assert not isinstance(exc.value, ModelNotServedError)


def test_a_url_without_v1_models_is_explained():
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})

    def gateway(request):
        if request.url.host == "a2" and request.url.path == "/v1/models":
            return httpx.Response(404, json={"detail": "Not Found"})
        return fleet(request)

    with RerankClient(URLS, transport=httpx.MockTransport(gateway)) as client:
        with pytest.raises(APIError, match=r"http://a2:8000/v1/models answered 404.*cannot tell which model"):
            client.rerank("q", ["x"], model="A")


def test_one_url_is_not_routed_and_keeps_the_servers_own_404():
    fleet = Fleet({"a1": ["A"]})
    with RerankClient("http://a1:8000", transport=httpx.MockTransport(fleet)) as client:
        with pytest.raises(NotFoundError, match="does not exist") as exc:
            client.rerank("q", ["x"], model="B")
    assert not isinstance(exc.value, ModelNotServedError)
    assert fleet.asked("a1") == 0  # a named model is sent as is


def test_async_client_routes_the_same_and_asks_once_under_concurrency():
    fleet = Fleet({"a1": ["A"], "a2": ["A"], "b1": ["B"]})

    async def slow(request):
        await asyncio.sleep(0.005)
        return fleet(request)

    async def run():
        async with AsyncRerankClient(URLS, transport=httpx.MockTransport(slow)) as client:
            answers = await asyncio.gather(*(client.rerank("q", ["x"], model=m) for m in ["A", "B"] * 10))
            with pytest.raises(ModelNotServedError, match="'C'"):
                await client.score("q", ["x"], model="C")
            return answers, await client.models()

    answers, models = asyncio.run(run())
    assert [a.model for a in answers] == ["A", "B"] * 10
    assert models == ["A", "B"]
    assert fleet.posted_to("A") == {"a1", "a2"} and fleet.posted_to("B") == {"b1"}
    # 20 concurrent first calls asked once; then once more before C was called unknown, and for models()
    assert [fleet.asked(h) for h in ("a1", "a2", "b1")] == [3, 3, 3]


# --- the real thing: two different models served side by side by `rerank-kit up` -------------------


def _consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        first = launcher.free_port()
        try:
            for port in range(first, first + count):
                launcher.check_port_free("127.0.0.1", port)
        except ServeError:  # taken: try another
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _rk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rerank_kit.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=900
    )


@pytest.fixture(scope="module")
def two_models(tiny_model):
    """A tiny cross-encoder and a tiny Qwen3-Reranker, one server each, started by `rerank-kit up`."""
    cross, qwen = str(tiny_model("ms-marco-cross-encoder")), str(tiny_model("qwen3-reranker"))
    port = _consecutive_free_ports(2)
    up = _rk(
        "up", cross, qwen, "--family", "ms-marco-cross-encoder", "--family", "qwen3-reranker",
        "--port", str(port), "--eager", "--dtype", "float32", "--kv-cache-gib", "0.5",
        "--timeout", str(SERVER_START_TIMEOUT),
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        line = re.search(r"RERANK_KIT_URL=(\S+)", up.stderr)
        assert line is not None, up.stderr
        yield {"urls": line.group(1).split(","), "port": port, "cross": cross, "qwen": qwen, "up": up}
    finally:
        _rk("down", "--port", str(port))
        _rk("down", "--port", str(port + 1))


@pytest.mark.vllm
def test_up_starts_each_model_on_its_port_and_status_lists_them_by_model(two_models):
    port = two_models["port"]
    assert two_models["urls"] == [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    assert two_models["up"].stderr.count(": self-check ") == 2  # one per server, each passed (or up fails)
    assert len(two_models["up"].stdout.strip().splitlines()) == 2  # a request to try per model
    status = _rk("status", "--json")
    rows = {row["port"]: row for row in json.loads(status.stdout)}
    assert rows[port]["model"] == two_models["cross"] and rows[port + 1]["model"] == two_models["qwen"]
    assert rows[port]["healthy"] and rows[port + 1]["healthy"]


@pytest.mark.vllm
def test_the_client_routes_each_call_to_its_models_server(two_models):
    cross, qwen = two_models["cross"], two_models["qwen"]
    url_cross, url_qwen = two_models["urls"]
    docs = ["Harper Lee wrote To Kill a Mockingbird.", "The Eiffel Tower is in Paris.", "Bread needs yeast."]
    with RerankClient(two_models["urls"]) as client:
        assert sorted(client.models()) == sorted([cross, qwen])
        routed_cross = client.rerank("Who wrote it?", docs, model=cross)
        routed_qwen = client.rerank("Who wrote it?", docs, model=qwen, instruction="Find the author")
        counts = client.replica_counts()
        with pytest.raises(ModelNotServedError) as exc:
            client.rerank("q", ["x"], model="no-such-model")
        with pytest.raises(ConfigError, match="several models"):
            client.rerank("q", ["x"])
    assert routed_cross.model == cross and routed_qwen.model == qwen
    assert counts == {url_cross: 1, url_qwen: 1}
    assert exc.value.served == {cross: [url_cross], qwen: [url_qwen]}
    # what each call got is that model's answer: the same as asking its server alone
    with RerankClient(url_cross) as alone:
        direct = alone.rerank("Who wrote it?", docs, model=cross)
    assert [r.index for r in routed_cross.results] == [r.index for r in direct.results]
    assert [r.relevance_score for r in routed_cross.results] == pytest.approx(
        [r.relevance_score for r in direct.results], abs=1e-6
    )

    async def run():
        async with AsyncRerankClient(two_models["urls"]) as aclient:
            return await asyncio.gather(
                aclient.rerank("Who wrote it?", docs, model=cross), aclient.score("Who wrote it?", docs, model=qwen)
            )

    async_cross, async_qwen = asyncio.run(run())
    assert [r.index for r in async_cross.results] == [r.index for r in direct.results]
    assert async_qwen.model == qwen and len(async_qwen.scores) == len(docs)


@pytest.mark.vllm
def test_down_model_stops_that_models_servers_only(two_models):
    # last in this module: it stops the cross-encoder
    down = _rk("down", two_models["cross"])
    assert down.returncode == 0, down.stderr
    port = two_models["port"]
    assert launcher.ServerRecord.load(port) is None and launcher.ServerRecord.load(port + 1) is not None
    with RerankClient(two_models["urls"], max_retries=1, deadline=20) as client:
        assert client.rerank("q", ["x"], model=two_models["qwen"]).model == two_models["qwen"]
