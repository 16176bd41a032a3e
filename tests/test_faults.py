"""Real processes, real faults: a replica killed with SIGKILL mid-run, a server restarted mid-run,
a slow replica.

Two CPU servers of the MiniLM-L6 cross-encoder, started by rerank-kit's daemon launcher. The
client must lose no request: failover while another replica is up, retries while none is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SERVER_START_TIMEOUT, server_options
from rerank_kit import RerankClient, launcher
from rerank_kit.launcher import machine
from rerank_kit.recipes import get_recipe

pytestmark = pytest.mark.vllm

DOCS = [f"passage {i} about reranking and retrieval with vLLM" for i in range(8)]


def _command(path, port):
    recipe = get_recipe(str(path), family="ms-marco-cross-encoder")
    return launcher.build_command(
        recipe, server_options(port=port, dtype=None), vllm_version=launcher.vllm_version(), machine=machine.detect()
    )


@pytest.fixture(scope="module")
def replicas(tiny_model):
    path = tiny_model("ms-marco-cross-encoder")
    commands = [_command(path, launcher.free_port()) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda c: launcher.start_daemon(c, timeout=SERVER_START_TIMEOUT), commands))
    yield commands, records
    for record in records:
        launcher.stop_daemon(record.port)


class Load:
    """Requests in a loop from a few threads until stopped; counts successes and failures."""

    def __init__(self, client: RerankClient, threads: int = 4):
        self.client = client
        self.ok = 0
        self.errors: list[BaseException] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                response = self.client.rerank("what is a reranker?", DOCS)
                assert len(response.results) == len(DOCS)
            except BaseException as exc:
                with self._lock:
                    self.errors.append(exc)
            else:
                with self._lock:
                    self.ok += 1
                    self.latencies.append(time.perf_counter() - start)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=300)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # e.g. a timeout: the port is held by something that does not answer
        return False
    return False


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_kill_9_one_replica_mid_run_loses_nothing(replicas):
    _commands, records = replicas
    victim, survivor = records
    client = RerankClient([r.url for r in records], cooldown=2.0)
    with Load(client) as load:
        _wait_for(lambda: load.ok >= 20)
        os.kill(victim.pid, signal.SIGKILL)  # the API server dies mid-request, like an OOM kill
        # its port goes with it, though its engine core lives on: new connections are refused at once (a forked
        # engine core that kept the inherited listening socket left them waiting for their timeout)
        _wait_for(lambda: _refused(victim.port), timeout=10)
        served_before = client.replica_counts()[survivor.url]
        _wait_for(lambda: client.replica_counts()[survivor.url] >= served_before + 40)
    assert load.errors == []
    counts = client.replica_counts()
    assert counts[victim.url] > 0 and counts[survivor.url] > 0
    print(f"kill -9: {load.ok} requests, 0 lost; per replica {counts}")


def test_restarted_server_loses_nothing_within_the_retry_budget(replicas):
    """Only one replica in the client: while it restarts, requests wait and retry instead of failing."""
    commands, records = replicas
    victim, survivor = records
    assert launcher.group_alive(victim.pid)  # vLLM's engine core outlived its SIGKILLed API server...
    launcher.stop_daemon(victim.port)
    assert not launcher.group_alive(victim.pid)  # ...and `down` stops it all the same
    # A budget of 15 retries waits up to ~120 s in all: a CPU restart (stop + start) takes 50-70 s here.
    client = RerankClient(survivor.url, max_retries=15)
    with Load(client, threads=2) as load:
        _wait_for(lambda: load.ok >= 5)
        launcher.stop_daemon(survivor.port)
        stopped = time.monotonic()
        launcher.start_daemon(commands[1], timeout=SERVER_START_TIMEOUT)
        restart_s = time.monotonic() - stopped
        done_before = load.ok
        _wait_for(lambda: load.ok >= done_before + 5)
    assert load.errors == []
    print(f"restart took {restart_s:.0f} s; {load.ok} requests, 0 lost; slowest {max(load.latencies):.1f} s")


def test_killed_replica_restarted_gets_traffic_again(replicas):
    commands, records = replicas
    victim = records[0]
    launcher.start_daemon(commands[0], timeout=SERVER_START_TIMEOUT)
    # A restarted server's first request pays its one-time costs (first forward, lazy imports), and least-outstanding
    # balancing rightly sends a slow replica less: one request to it first, so the share below is a warm replica's
    # (one CI run on 2026-12-07 gave the cold one 2 of 40).
    with RerankClient(victim.url) as warm:
        warm.rerank("q", DOCS)
    client = RerankClient([r.url for r in records], cooldown=1.0)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.rerank("q", DOCS), range(40)))
    counts = client.replica_counts()
    print(f"after restart: per replica {counts}")
    assert counts[victim.url] >= 5, counts


class SlowProxy:
    """A TCP proxy in front of a real replica that holds every client->server chunk for ``delay`` s.

    vLLM cannot be made slow on demand; the proxy makes one replica slow without touching the other.
    """

    def __init__(self, upstream_port: int, delay: float):
        self.upstream_port, self.delay = upstream_port, delay
        self.port = launcher.free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader, writer, delay):
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(
            self._pipe(client_reader, up_writer, self.delay), self._pipe(up_reader, client_writer, 0.0)
        )

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        async def shutdown():  # the pipes end on the loop, before it stops (else they are destroyed pending)
            self.server.close()
            pipes = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def test_slow_replica_gets_less_traffic_and_costs_bounded_latency(replicas):
    """One replica answers 3 s late; a 1 s per-request timeout moves its requests to the other one."""
    _commands, records = replicas
    fast = records[1]
    with SlowProxy(records[0].port, delay=3.0) as slow_url:
        client = RerankClient([slow_url, fast.url], timeout=1.0, cooldown=5.0, max_retries=4)
        with Load(client, threads=4) as load:
            _wait_for(lambda: load.ok >= 60, timeout=120)
    counts = client.replica_counts()
    slowest = max(load.latencies)
    print(f"slow replica: {load.ok} requests, 0 lost; per replica {counts}; slowest {slowest:.2f} s")
    assert load.errors == []
    assert counts[slow_url] == 0  # no request finished there: each timed out and went to the fast one
    assert counts[fast.url] >= 60
    # a request pays at most one timeout (the slow replica then cools down) plus one fast answer
    assert slowest < 1.0 + 3.0, slowest
