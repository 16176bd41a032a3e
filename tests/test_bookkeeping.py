"""rerank_kit.server.bookkeeping: vLLM's bookkeeping per engine request, cheaper and the same.

Against the installed vLLM and prometheus_client: the pins hold (all three replacements install), a pair's
parameters come out as vLLM's deepcopy makes them and share nothing mutable, request-id suffixes have vLLM's form
and a forked child draws its own, and a histogram observed through the replacement exposes exactly the samples
prometheus_client's own observe gives, NaN, infinities and values on the bounds included. Every test puts vLLM's
objects back (monkeypatch), so the rest of the suite sees vLLM as installed.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from prometheus_client import CollectorRegistry, Histogram
from vllm.pooling_params import PoolingParams
from vllm.v1.engine import input_processor
from vllm.v1.metrics import loggers

from rerank_kit.server import bookkeeping


@pytest.fixture
def installed(monkeypatch):
    for owner, name in ((PoolingParams, "clone"), (input_processor, "random_uuid"),
                        (loggers.PrometheusStatLogger, "__init__")):  # fmt: skip
        monkeypatch.setattr(owner, name, getattr(owner, name))
    off: list[str] = []
    names = bookkeeping.install(off)
    assert off == [] and names == ["clone", "request ids", "histograms"]
    return names


def test_the_clone_is_vllms_deepcopy(installed):
    for params in (
        PoolingParams(),
        PoolingParams(task="classify", use_activation=False),
        PoolingParams(task="embed", dimensions=8, extra_kwargs={"a": [1, {"b": 2}]}, returned_token_ids=[3, 4]),
    ):
        clone = params.clone()
        assert clone == copy.deepcopy(params) and clone is not params
        for name in PoolingParams.__struct_fields__:
            value = getattr(params, name)
            if isinstance(value, (list, dict)):
                assert getattr(clone, name) is not value  # nothing mutable shared
        if params.extra_kwargs:
            clone.extra_kwargs["a"][1]["b"] = 5
            assert params.extra_kwargs["a"][1]["b"] == 2


def test_request_ids_keep_vllms_form(installed):
    suffixes = [input_processor.random_uuid() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) for s in suffixes)
    assert len(set(suffixes)) == len(suffixes)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next suffix, then out
        os.write(write, input_processor.random_uuid().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16).decode()
    assert child != input_processor.random_uuid()  # the parent's next one: a forked child is seeded anew
    assert input_processor.random_uuid.__wrapped__ is not input_processor.random_uuid  # vLLM's, for pin checks


@pytest.mark.parametrize("mode", ["deferred", "bisect"])
def test_histograms_expose_what_prometheus_client_gives(installed, mode, monkeypatch):
    """Read after every value and only at the end, with more values than one flush holds (the deferred queue's
    sum added in order, its buckets counted at once) and by bisection (multiprocess mode: values read elsewhere)."""
    if mode == "bisect":
        monkeypatch.setattr(bookkeeping, "_reads_verified", lambda: False)
    monkeypatch.setattr(bookkeeping, "FLUSH_AT", 7)
    buckets = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0]
    values = [0.0, -1.0, 0.3, 0.30000001, 1.0, 7.0, 80.0, 81.0, math.inf, -math.inf, math.nan, 1e-9, 2.5, 39.99,
              3, 0.1 + 0.2, 1 / 3, 12345678901, -0.0]  # fmt: skip
    for read_each in (False, True):
        exposed = []
        for fast in (False, True):
            registry = CollectorRegistry()
            child = Histogram("h", "help", ["engine"], buckets=buckets, registry=registry).labels("0")
            if fast:
                child.observe = bookkeeping._observer(child)
                assert ("_child_samples" in vars(child)) == (mode == "deferred")  # which path is under test
            seen = []
            for v in values * 3:
                child.observe(v)
                if read_each:
                    seen.append(exposition(registry))
            seen.append(exposition(registry))
            exposed.append(seen)
        assert exposed[0] == exposed[1]


def exposition(registry) -> str:
    """What a scrape shows, less the creation time (repr: a NaN sum compares equal)."""
    return repr([(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples if "created" not in s.name])


def test_a_deferred_histogram_adds_up_before_an_exemplar_and_when_full(installed, monkeypatch):
    monkeypatch.setattr(bookkeeping, "FLUSH_AT", 3)
    registry = CollectorRegistry()
    child = Histogram("h", "help", ["engine"], buckets=[1.0, 2.0], registry=registry).labels("0")
    child.observe = bookkeeping._observer(child)
    child.observe(0.5)
    child.observe(1.5)
    assert child._sum.get() == 0.0  # waiting
    child.observe(2.5)
    assert child._sum.get() == 4.5 and [b.get() for b in child._buckets] == [1.0, 1.0, 1.0]  # three: added up
    child.observe(0.25)
    child.observe(1.0, {"trace_id": "x"})  # the queued value first, then this one with its exemplar
    assert child._sum.get() == 5.75 and [b.get() for b in child._buckets] == [3.0, 1.0, 1.0]
    assert child._buckets[0].get_exemplar().value == 1.0


def test_small_output_tensors_decode_as_vllms_decoder_decodes_them():
    """The engine's outputs (scores, an embedding row, ints, bf16, a 0-d and an empty tensor, one big enough to
    travel out of band) through vLLM's own decoder and through one given ``fast_tensors``: the same tensors."""
    import torch
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    tensors = [torch.tensor([0.5]), torch.tensor([[1.0, -2.5]], dtype=torch.bfloat16), torch.tensor([3, -4]),
               torch.tensor(2.0), torch.zeros(0), torch.randn(400), torch.tensor([-0.0, float("nan")])]  # fmt: skip
    outputs = EngineCoreOutputs(
        outputs=[
            EngineCoreOutput(request_id=f"r{i}", new_token_ids=[], pooling_output=t) for i, t in enumerate(tensors)
        ]
    )
    frames = MsgpackEncoder().encode(outputs)
    assert len(frames) > 1  # the big one out of band: vLLM's own path for it
    vllms, ours = MsgpackDecoder(EngineCoreOutputs), MsgpackDecoder(EngineCoreOutputs)
    assert bookkeeping.fast_tensors(ours) and not bookkeeping.fast_tensors(ours)  # once per decoder
    assert "_decode_tensor" not in vars(vllms)  # the class is left alone
    for a, b, sent in zip(vllms.decode(frames).outputs, ours.decode(frames).outputs, tensors, strict=True):
        x, y = a.pooling_output, b.pooling_output
        assert (y.dtype, y.shape) == (x.dtype, x.shape) == (sent.dtype, sent.shape)
        assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))  # bit for bit (NaN)
        y.add_(1)  # its own memory: the received frame is not written
    assert torch.equal(vllms.decode(frames).outputs[0].pooling_output, tensors[0])


def test_an_unknown_prometheus_client_is_left_alone(monkeypatch):
    monkeypatch.setattr(loggers.PrometheusStatLogger, "__init__", loggers.PrometheusStatLogger.__init__)
    monkeypatch.setattr(bookkeeping, "HISTOGRAM_OBSERVE", "0000000000000000")
    assert "not the body verified" in bookkeeping._histograms()
    assert not getattr(loggers.PrometheusStatLogger.__init__, "rerank_kit", False)


def test_vllms_variables_are_cached_once_asked():
    """In a process of its own (this one keeps reading them): before, each read sees os.environ; after, not."""
    code = (
        "import os; from vllm import envs; from rerank_kit.server import bookkeeping\n"
        "os.environ['VLLM_COMPUTE_NANS_IN_LOGITS'] = '1'; before = envs.VLLM_COMPUTE_NANS_IN_LOGITS\n"
        "assert bookkeeping.cache_envs()\n"
        "os.environ['VLLM_COMPUTE_NANS_IN_LOGITS'] = '0'; print(before, envs.VLLM_COMPUTE_NANS_IN_LOGITS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["True", "True"]
