"""``server.engine_batch``: a scoring request's pairs sent to the engine core in one utility call.

On a real server (the tiny Qwen3-Reranker of test_families.py, one server for both modules): requests from several
clients at once, one of them dropped mid-way, answer as they do one at a time and leave nothing in the engine.
Without a server, with vLLM's own classes: the engine core's method does for each request what its input thread
does for an ADD message (the requests decoded with vLLM's decoder; each error answered by the handler vLLM's ADD
branch calls, on a stand-in for the engine core whose handlers record what they are given: a real engine cannot be
made to fail a given request's preprocessing); the client collects only the collecting task's text requests; and a
refused utility call sends every pair as vLLM does (a stand-in client: a real engine core does not refuse it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time

import httpx
import msgspec
import pytest

pytest.importorskip("vllm")

from vllm.pooling_params import PoolingParams
from vllm.v1.engine import EngineCoreRequest, EngineCoreRequestType, core, core_client
from vllm.v1.serial_utils import MsgpackEncoder

from rerank_kit import RerankClient
from rerank_kit._contract import VLLM_API_KEY_ENV
from rerank_kit.server import engine_batch


@pytest.fixture(scope="module")
def installed():
    off: list[str] = []
    if not engine_batch.install(off):
        pytest.skip(f"not installed on this vLLM: {off}")
    return core.EngineCoreProc.rerank_kit_add_requests


def request(i: int, **changes) -> EngineCoreRequest:
    made = EngineCoreRequest(
        request_id=f"score-{i}", prompt_token_ids=[100 + i, 7, 8, 9], mm_features=None, sampling_params=None,
        pooling_params=PoolingParams(task="classify"), arrival_time=1000.0 + i, lora_request=None, cache_salt=None,
        data_parallel_rank=None,
    )  # fmt: skip
    return msgspec.structs.replace(made, **changes)


class Core:
    """A stand-in for the engine core's methods the ADD branch calls; ``refuse``: request id -> what
    ``preprocess_add_request`` raises for it, ``crash``: the ids whose ``_handle_client_request`` raises."""

    def __init__(self, refuse: dict[str, Exception] | None = None, crash: tuple[str, ...] = ()) -> None:
        self.refuse, self.crash = refuse or {}, crash
        self.calls: list[tuple] = []

    def preprocess_add_request(self, req):
        if req.request_id in self.refuse:
            raise self.refuse[req.request_id]
        return (req, req.current_wave)

    def _handle_client_request(self, kind, request):
        if request[0].request_id in self.crash:
            raise RuntimeError("scheduler refused")
        self.calls.append(("added", kind, request[0].request_id, request[0].prompt_token_ids, request[1]))

    def _handle_request_preproc_error(self, req):
        self.calls.append(("error", req.request_id))

    def _handle_request_validation_error(self, req, exc):
        self.calls.append(("invalid", req.request_id, str(exc)))

    def _handle_mm_cache_miss(self, req, exc):
        self.calls.append(("cache miss", req.request_id))


def payload(requests: list[EngineCoreRequest]) -> bytes:
    (buffer,) = MsgpackEncoder().encode(requests)  # what the client sends: vLLM's encoder, one buffer
    return buffer


def test_each_request_goes_to_the_add_branch_in_order_with_its_wave(installed):
    engine = Core()
    sent = [request(i, client_index=3, current_wave=i % 2) for i in range(5)]
    assert installed(engine, payload(sent)) == 5
    assert engine.calls == [
        ("added", EngineCoreRequestType.ADD, f"score-{i}", [100 + i, 7, 8, 9], i % 2) for i in range(5)
    ]


def test_a_request_that_fails_is_answered_as_an_add_message_would_be_and_the_rest_are_added(installed):
    """vLLM's ADD branch: a multimodal cache miss (0.28+) and a validation error (0.33+) have their own answers,
    anything else the preprocessing error's; a pair whose hand-off to the scheduler raises gets the latter too."""
    invalid = getattr(core, "VLLMValidationError", None)
    miss = getattr(core, "MultiModalCacheMissError", None)
    refuse: dict[str, Exception] = {
        "score-1": ValueError("bad"),
        "score-2": ValueError("bad") if invalid is None else invalid("too long"),
        "score-3": ValueError("bad") if miss is None else miss("no data"),
    }
    engine = Core(refuse=refuse, crash=("score-4",))
    assert installed(engine, payload([request(i) for i in range(6)])) == 6
    assert engine.calls == [
        ("added", EngineCoreRequestType.ADD, "score-0", [100, 7, 8, 9], 0),
        ("error", "score-1"),
        ("error", "score-2") if invalid is None else ("invalid", "score-2", "too long"),
        ("error", "score-3") if miss is None else ("cache miss", "score-3"),
        ("error", "score-4"),  # vLLM's busy loop would end the engine; here only the pair fails
        ("added", EngineCoreRequestType.ADD, "score-5", [105, 7, 8, 9], 0),
    ]


def bare_client() -> core_client.AsyncMPClient:
    """vLLM's own client class without a connection: its send recorded instead of made."""
    client = object.__new__(core_client.AsyncMPClient)
    client.client_index = 2
    client.sent = []

    async def _send_input(kind, req, engine=None):
        client.sent.append((kind, req.request_id))

    client._send_input = _send_input
    client._ensure_output_queue_task = lambda: None
    return client


def test_only_the_collecting_tasks_text_requests_are_held_back(installed):
    client = bare_client()
    engine = type("Engine", (), {"engine_core": client})()

    async def collector():
        with engine_batch.collecting(engine) as batch:
            await client.add_request_async(request(0))
            await asyncio.sleep(0.01)  # the other task sends meanwhile
            await client.add_request_async(request(1, mm_features=[object()]))  # multimodal: sent as it comes
            await client.add_request_async(request(2))
        return batch

    async def other():
        await asyncio.sleep(0)
        await client.add_request_async(request(9))

    async def main():
        return (await asyncio.gather(collector(), other()))[0]

    batch = asyncio.run(main())
    assert [r.request_id for r in batch] == ["score-0", "score-2"]
    assert all(r.client_index == 2 for r in batch)
    assert client.sent == [(EngineCoreRequestType.ADD, "score-9"), (EngineCoreRequestType.ADD, "score-1")]
    assert engine_batch._BATCH.get() is None


def test_a_refused_utility_call_sends_every_pair_as_vllm_does_and_stops_asking(installed, monkeypatch, caplog):
    monkeypatch.setitem(engine_batch._STATE, "on", True)
    client = bare_client()
    client.encoder = MsgpackEncoder()

    async def call_utility_async(method, *args):
        assert method == engine_batch.METHOD and isinstance(args[0], bytes)
        raise Exception("Call to rerank_kit_add_requests method failed: no such method")

    client.call_utility_async = call_utility_async
    engine = type("Engine", (), {"engine_core": client})()
    batch = [request(i) for i in range(3)]
    asyncio.run(engine_batch.send(engine, batch))
    assert client.sent == [(EngineCoreRequestType.ADD, f"score-{i}") for i in range(3)]
    assert engine_batch._STATE["on"] is False
    assert "sent one by one from now on" in caplog.text
    with engine_batch.collecting(engine) as again:
        assert again is None


@pytest.mark.vllm
def test_concurrent_requests_answer_as_alone_and_dropped_ones_leave_the_engine_empty(qwen3_server):
    server = qwen3_server
    queries = [f"What does passage {k} say about engines?" for k in range(6)]
    docs = [[f"Passage {k}-{i}: engines {'and caches ' * (i % 4)}run requests." for i in range(24)] for k in range(6)]
    key = server.command.env.get(VLLM_API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def metrics() -> tuple[float, float]:
        """(requests running or waiting in the engine, prompt tokens it has taken)"""
        text = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30).raise_for_status().text
        counts = re.findall(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)$", text, re.M)
        tokens = re.findall(r"^vllm:prompt_tokens_total\{[^}]*\} (\S+)$", text, re.M)
        assert counts and tokens
        return sum(map(float, counts)), sum(map(float, tokens))

    with RerankClient(server.url, model=server.model) as client:
        before = metrics()[1]
        alone = [
            [r.relevance_score for r in client.rerank(q, d, return_documents=False)]
            for q, d in zip(queries, docs, strict=True)
        ]
        own = metrics()[1] - before  # the six requests' prompt tokens

        def drop(after: float) -> bool:  # a client that sends 512 pairs and gives up `after` seconds later
            body = {"model": server.model, "query": "dropped", "documents": [f"doc {i} " * 40 for i in range(512)]}
            try:
                httpx.post(
                    f"{server.url}/v1/rerank", json=body, headers=headers, timeout=httpx.Timeout(10.0, read=after)
                )
            except httpx.ReadTimeout:
                return True
            return False

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            # dropped at different stages: while its prompts are built, in the engine, with its answer near
            dropped = [pool.submit(drop, after) for after in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)]
            together = list(
                pool.map(lambda qd: client.rerank(*qd, return_documents=False), zip(queries, docs, strict=True))
            )
            assert any(f.result() for f in dropped)
    for one, many in zip(alone, together, strict=True):
        assert [r.relevance_score for r in many] == pytest.approx(one, abs=1e-5)
    log = server.log.read_text(errors="replace")
    if not engine_batch.unverified():  # this vLLM's bodies are the verified ones
        assert engine_batch.MESSAGE in log
        assert "sent one by one" not in log
    # the dropped requests left nothing in the engine, and some of their pairs had reached it
    deadline = time.monotonic() + 30
    while (now := metrics())[0] > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert now[0] == 0
    assert now[1] - before - 2 * own > 0
