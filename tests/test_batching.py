"""``server.batching.pair_outputs``: a scoring request's pairs handed to the engine at once, with
``AsyncLLM.encode``'s error handling. The engine here is a stand-in with ``add_request``/``abort`` and vLLM's
output-queue shape: what a real engine cannot be made to do on demand (refuse the third pair of a request, die,
take a cancellation between two pairs). The same path serving real requests is checked in test_families.py
(parity with the references, and its start-up line) and test_plugin_pins.py (installed only on verified bodies)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from rerank_kit.server.batching import EncodeErrors, pair_outputs


class Refused(Exception):
    """An error encode passes on as it is (vLLM's VLLMClientError)."""


class Dead(Exception):
    """The engine's death (EngineDeadError): nothing to abort."""


class Wrapped(Exception):
    """EngineGenerateError: what encode raises for any other error."""


ERRORS = EncodeErrors(Dead, (Refused,), Wrapped)


@dataclasses.dataclass
class Output:
    index: int
    finished: bool = True


class Queue:
    def __init__(self, request_id: str) -> None:
        self.request_id, self.items, self.closed = request_id, asyncio.Queue(), False

    def get_nowait(self):
        return None if self.items.empty() else self.items.get_nowait()

    async def get(self):
        return await self.items.get()

    def close(self) -> None:
        self.closed = True


class Engine:
    """Answers each pair (in reverse order, as a batch may finish) after every pair is added; ``fail_at``: the
    ``add_request`` of that pair raises ``error``."""

    def __init__(self, fail_at: int | None = None, error: Exception | None = None, answer: bool = True) -> None:
        self.fail_at, self.error, self.answer = fail_at, error, answer
        self.added: list[tuple[str, dict]] = []
        self.queues: list[Queue] = []
        self.aborted: list[str] = []

    async def add_request(self, request_id, prompt, params, *, lora_request, trace_headers, priority):
        if len(self.added) == self.fail_at:
            raise self.error
        self.added.append((request_id, {"prompt": prompt, "params": params, "priority": priority}))
        self.queues.append(Queue(request_id))
        return self.queues[-1]

    def finish_all(self) -> None:
        for i, queue in reversed(list(enumerate(self.queues))):
            queue.items.put_nowait(Output(i))

    async def abort(self, request_ids, internal=False):
        assert internal
        self.aborted.extend(request_ids)


def inputs(n: int) -> list[dict]:
    return [{"prompts": f"p{i}", "params": "pooling", "lora_requests": None, "priorities": i} for i in range(n)]


IDS = [f"score-x-{i}" for i in range(4)]


def test_every_pair_is_added_before_any_output_is_read_and_each_comes_back_under_its_index():
    async def main():
        engine = Engine()
        gen = pair_outputs(engine, IDS, inputs(4), None, ERRORS)
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        assert [r for r, _ in engine.added] == IDS  # all four in the engine, none answered yet
        assert [x["priority"] for _, x in engine.added] == [0, 1, 2, 3]
        engine.finish_all()
        got = [await first] + [item async for item in gen]
        return engine, got

    engine, got = asyncio.run(main())
    assert [(i, out.index) for i, out in got] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert engine.aborted == [] and all(q.closed for q in engine.queues)


@pytest.mark.parametrize(
    ("error", "raised"), [(Refused("too long"), Refused), (RuntimeError("boom"), Wrapped), (Dead(), Dead)]
)
def test_a_pair_the_engine_refuses_raises_as_encode_does_and_the_pairs_already_added_are_aborted(error, raised):
    engine = Engine(fail_at=2, error=error)

    async def main():
        return [item async for item in pair_outputs(engine, IDS, inputs(4), None, ERRORS)]

    with pytest.raises(raised) as caught:
        asyncio.run(main())
    if raised is Wrapped:
        assert caught.value.__cause__ is error
    # a dead engine is not asked to abort anything; otherwise the two pairs already in it are
    assert engine.aborted == ([] if raised is Dead else IDS[:2])
    assert all(q.closed for q in engine.queues)


def test_a_cancelled_request_aborts_every_pair_not_read_to_its_end():
    engine = Engine()

    async def main():
        async def consume():
            return [item async for item in pair_outputs(engine, IDS, inputs(4), None, ERRORS)]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        engine.queues[0].items.put_nowait(Output(0))  # pair 0 answered, the rest still in the engine
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert engine.aborted == IDS[1:]
    assert all(q.closed for q in engine.queues)


def test_a_consumer_that_stops_early_aborts_the_rest():
    """vLLM's _collect_batch stops at an output with an error; the generator is then closed."""
    engine = Engine()

    async def main():
        gen = pair_outputs(engine, IDS, inputs(4), None, ERRORS)
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        engine.finish_all()
        await first
        await gen.aclose()

    asyncio.run(main())
    assert engine.aborted == IDS[1:]
