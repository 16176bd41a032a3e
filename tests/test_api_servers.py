"""Several API server processes (`--api-server-count 2`): the guard, the plugin and the self-check in each.

On a GPU with spare cores the launcher sets --api-server-count (machine.api_server_choice) and starts
vLLM through `vllm serve` (rerank_kit.launcher.vllm_cli). vLLM then runs N API server processes behind
one port: every one of them must load the plugin and the guard, or some requests would get wrong
scores or no input limits. Run here on the CPU backend with a tiny Qwen3-Reranker.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import psutil
import pytest

from conftest import start_server
from rerank_kit.launcher import selfcheck
from rerank_kit.recipes import get_recipe
from rerank_kit.server.plugin import ACTIVE_MESSAGE

pytestmark = pytest.mark.vllm

MAX_DOCS = 4
REQUESTS = 24
CONCURRENCY = 8
ROUNDS = 3


@pytest.fixture(scope="module")
def server(tiny_model, server_logs):
    recipe = get_recipe(str(tiny_model("qwen3-reranker")), family="qwen3-reranker")
    with start_server(recipe, server_logs, max_documents=MAX_DOCS, extra_args=("--api-server-count", "2")) as s:
        yield s


def _api_server_pids(log: str, message: str) -> set[int]:
    """PIDs of the API server processes ("(ApiServer_0 pid=123) ...") that logged ``message``."""
    return {int(p) for p in re.findall(r"\(ApiServer_\d+ pid=(\d+)\)[^\n]*" + re.escape(message), log)}


def test_started_through_vllm_serve_with_two_api_servers(server):
    assert server.command.argv[1:4] == ["-m", "rerank_kit.launcher.vllm_cli", "serve"]
    # /health answers once the first of the two processes listens on the shared socket (the other takes no
    # connection until it is ready): give the second the time a start-up takes
    deadline = time.monotonic() + 120
    while len(pids := _api_server_pids(server.log.read_text(), ACTIVE_MESSAGE)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(pids) == 2, "the plugin loads in each process"


def test_self_check_passes_on_every_process(server):
    # each probe is one request; over several, both processes answer (vLLM balances new connections)
    for _ in range(6):
        report = selfcheck.check_command(server.command)  # raises SelfCheckError on a wrong prompt
        assert report.passed and report.probes and report.skipped is None


def test_guard_limits_every_request(server):
    body = {"model": server.model, "query": "q", "documents": ["d"] * (MAX_DOCS + 1)}
    for _ in range(REQUESTS):
        # a new connection each time, so the kernel spreads them over both processes
        response = httpx.post(f"{server.url}/v1/rerank", json=body, timeout=30)
        assert response.status_code == 413, response.text
        assert f"this server accepts at most {MAX_DOCS}" in response.text


def test_both_processes_served_requests(server):
    """Each API server process spends CPU on the requests (its own tokenization), so both answered some.

    vLLM's API servers accept from one shared listening socket. Requests sent one after another can all be
    accepted by the same idle process (seen on an AMX Xeon: 0.14 vs 0.02 CPU seconds), so they go
    CONCURRENCY at a time, each on a connection of its own, in up to ROUNDS rounds of REQUESTS * 2."""
    processes = [psutil.Process(pid) for pid in _api_server_pids(server.log.read_text(), ACTIVE_MESSAGE)]
    before = [p.cpu_times().user + p.cpu_times().system for p in processes]
    documents = [f"document {i} about something else entirely, long enough to tokenize" for i in range(MAX_DOCS)]

    async def one(i: int) -> int:
        async with httpx.AsyncClient(timeout=60) as client:  # a new connection per request
            body = {"model": server.model, "query": f"query {i}", "documents": documents}
            return (await client.post(f"{server.url}/v1/rerank", json=body)).status_code

    async def round_of_requests() -> list[int]:
        statuses: list[int] = []
        for start in range(0, REQUESTS * 2, CONCURRENCY):
            statuses += await asyncio.gather(*(one(i) for i in range(start, start + CONCURRENCY)))
        return statuses

    for _ in range(ROUNDS):
        assert set(asyncio.run(round_of_requests())) == {200}
        busy = [p.cpu_times().user + p.cpu_times().system - b for p, b in zip(processes, before, strict=True)]
        if all(b > 0.15 * sum(busy) for b in busy):
            break
    assert all(b > 0.15 * sum(busy) for b in busy), f"CPU seconds per API server process: {busy}"
