"""One core, no server: what each of RESULTS 11.8's changes costs per pair against what it replaced.

- the hand-off to the engine core: vLLM's encoder and a ZeroMQ ROUTER socket (as the API server's client) sending
  64 engine requests one message each, or in one utility call (a DEALER in a forked process on the other CPU reads);
- a BERT-style request's prompts (bge-reranker's tiny XLM-R tokenizer, 64 documents of 40 words): every pair
  through the Rust tokenizer, or each distinct text once joined by the pair template (``prompts.pair_prompts``);
- a histogram observation: bisection (the previous replacement) or the queue added up when read;
- a pair's score tensor decoded: vLLM's decoder or the one ``bookkeeping.fast_tensors`` gives.

    .venv/bin/python bench/micro_handoff.py   # pins itself to CPU 0; needs the tiny bge model of frontend_cost.py
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 64


def per_pair(fn, repeat: int) -> float:
    fn()
    started = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - started) / repeat / PAIRS * 1e6


def handoff() -> dict[str, float]:
    import zmq
    import zmq.asyncio
    from vllm.pooling_params import PoolingParams
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.serial_utils import MsgpackEncoder

    encoder = MsgpackEncoder()
    requests = [
        EngineCoreRequest(
            request_id=f"score-{i}-0123456789abcdef", prompt_token_ids=list(range(1000, 1170)), mm_features=None,
            sampling_params=None, pooling_params=PoolingParams(task="classify"), arrival_time=time.time(),
            lora_request=None, cache_salt=None, data_parallel_rank=None,
        )
        for i in range(PAIRS)
    ]  # fmt: skip
    path = f"ipc:///tmp/rk-micro-{os.getpid()}"
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(path)
    child = os.fork()
    if child == 0:  # the engine core's side: read everything, on the other CPU
        os.sched_setaffinity(0, {1})
        dealer = zmq.Context().socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"E")
        dealer.connect(path)
        dealer.send(b"ready")
        while True:
            dealer.recv_multipart()

    async def main() -> dict[str, float]:
        await router.recv_multipart()

        async def each() -> None:
            for request in requests:
                await router.send_multipart((b"E", b"\x00", *encoder.encode(request)), copy=False)

        async def batched() -> None:
            (payload,) = encoder.encode(requests)
            call = (0, 1, "rerank_kit_add_requests", (payload,))
            await router.send_multipart((b"E", b"\x03", *encoder.encode(call)), copy=False)

        out = {}
        for name, fn in (("one message per pair", each), ("one utility call per request", batched)):
            await fn()
            started = time.process_time()
            for _ in range(300):
                await fn()
            out[name] = (time.process_time() - started) / 300 / PAIRS * 1e6
        return out

    try:
        return asyncio.run(main())
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def prompts() -> dict[str, float]:
    import sys

    from transformers import AutoTokenizer

    from rerank_kit.bench.workloads import random_workload
    from rerank_kit.server import prompts as score_prompts

    sys.path.insert(0, str(ROOT / "bench"))
    from frontend_cost import family_model

    tokenizer = AutoTokenizer.from_pretrained(family_model("bge-reranker"))
    case = random_workload(cases=1, docs_per_request=PAIRS, doc_tokens=40, query_tokens=10).cases[0]
    documents = [getattr(d, "text", d) for d in case.documents]
    queries = [case.query] * len(documents)
    kwargs = {"add_special_tokens": True, "truncation": True, "max_length": 513}
    copies: dict = {}

    def every_pair() -> None:
        encodings = score_prompts._rust_encodings(tokenizer, list(zip(queries, documents, strict=True)), kwargs, copies)
        score_prompts._from_rust(tokenizer, encodings)

    def template() -> None:
        assert score_prompts._template_pairs(tokenizer, queries, documents, kwargs, copies) is not None

    return {
        "every pair tokenized": per_pair(every_pair, 100),
        "each text once, the pair template": per_pair(template, 100),
    }


def histograms() -> dict[str, float]:
    import random

    from prometheus_client import CollectorRegistry, Histogram

    from rerank_kit.server import bookkeeping

    values = [random.random() * 10 for _ in range(PAIRS * 11)]  # vLLM observes 11 histograms per finished request
    verified = bookkeeping._reads_verified
    out = {}
    for name, reads in (("bisection", lambda: False), ("queued, added up when read", verified)):
        bookkeeping._reads_verified = reads
        registry = CollectorRegistry()
        child = Histogram("h", "h", ["e"], buckets=[0.3, 0.5, 0.8, 1, 2.5, 5, 10, 20, 40], registry=registry).labels(
            "0"
        )
        child.observe = bookkeeping._observer(child)

        def observe(child=child, registry=registry) -> None:
            for v in values:
                child.observe(v)
            list(registry.collect())

        out[name] = per_pair(observe, 200)
    bookkeeping._reads_verified = verified
    return out


def tensors() -> dict[str, float]:
    import torch
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    from rerank_kit.server import bookkeeping

    outputs = EngineCoreOutputs(
        outputs=[EngineCoreOutput(request_id=f"r{i}", new_token_ids=[], pooling_output=torch.tensor([0.5 + i]))
                 for i in range(PAIRS)]
    )  # fmt: skip
    frames = MsgpackEncoder().encode(outputs)
    vllms, ours = MsgpackDecoder(EngineCoreOutputs), MsgpackDecoder(EngineCoreOutputs)
    assert bookkeeping.fast_tensors(ours)
    return {
        "vLLM's decoder": per_pair(lambda: vllms.decode(frames), 500),
        "fast_tensors": per_pair(lambda: ours.decode(frames), 500),
    }


def main() -> None:
    os.sched_setaffinity(0, {0})
    for name, measure in (
        ("hand-off", handoff),
        ("prompts", prompts),
        ("histograms", histograms),
        ("tensors", tensors),
    ):
        for what, us in measure().items():
            print(f"{name:11s} {what:36s} {us:7.2f} µs CPU per pair")


if __name__ == "__main__":
    main()
