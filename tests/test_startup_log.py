"""The start-up log check (tests/startup_log.py) explains a warning only while its cause is present, and the
launcher passes the setting that keeps vLLM's AVX512-BF16 warning out of the log. No server needed."""

from __future__ import annotations

from rerank_kit import launcher
from rerank_kit.launcher.machine import Machine, cpu_choices
from rerank_kit.recipes import get_recipe
from startup_log import Context, unexplained

GiB = 1 << 30
AVX2 = Machine(2, frozenset({"avx2"}), 24 * GiB, 20 * GiB, 0)
ZEN4 = Machine(2, frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}), 24 * GiB, 20 * GiB, 0)
AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
SAPPHIRE_RAPIDS = Machine(2, AMX, 24 * GiB, 20 * GiB, 0)
WITH_TCMALLOC = Machine(2, frozenset({"avx2"}), 24 * GiB, 20 * GiB, 0, tcmalloc="/usr/lib/libtcmalloc.so.4")

EAGER = "WARNING 12-05 21:00:00 [config.py:1] Enforce eager set, disabling torch.compile and CUDAGraphs."
TCMALLOC = "WARNING 12-05 21:00:00 [cpu.py:1] libtcmalloc is not found in LD_PRELOAD. For best performance, ..."
SSM = "WARNING 12-05 21:00:00 [cpu.py:317] Reset SSM cache type to float32 for accelerated GDN mamba backend 'none'."
ULIMIT = "WARNING 12-05 21:00:00 [utils.py:1] Found ulimit of 1024 and failed to automatically increase it."
UNKNOWN = "WARNING 12-05 21:00:00 [arg_utils.py:1] --some-flag is deprecated and will be removed."


def _command(machine: Machine, *, eager: bool):
    recipe = get_recipe("BAAI/bge-reranker-base")
    options = launcher.ServeOptions(port=8000, eager=eager, dtype="float32", kv_cache_gib=0.5)
    return launcher.build_command(recipe, options, vllm_version="0.32.0", machine=machine)


def _log(*lines: str) -> str:
    return "\n".join([*lines, "INFO Application startup complete.", UNKNOWN])  # after start-up: not judged


def test_a_setting_rerank_kit_passes_explains_its_warning_only_when_passed():
    log = _log(EAGER)
    assert unexplained(log, Context(_command(AVX2, eager=True), AVX2, "bge-reranker")) == []
    assert unexplained(log, Context(_command(AVX2, eager=False), AVX2, "bge-reranker")) == [EAGER]


def test_a_machine_fact_explains_its_warning_only_on_that_machine():
    assert unexplained(_log(TCMALLOC, ULIMIT), Context(_command(AVX2, eager=True), AVX2, "bge-reranker")) == []
    with_lib = Context(_command(WITH_TCMALLOC, eager=True), WITH_TCMALLOC, "bge-reranker")
    assert unexplained(_log(TCMALLOC), with_lib) == [TCMALLOC]  # preloaded, so vLLM should not say it


def test_unknown_warnings_and_the_avoided_ssm_warning_are_flagged():
    for machine in (AVX2, ZEN4, SAPPHIRE_RAPIDS):
        ctx = Context(_command(machine, eager=True), machine, "bge-reranker")
        assert unexplained(_log(UNKNOWN, SSM, "Traceback (most recent call last):"), ctx) == [
            UNKNOWN,
            SSM,
            "Traceback (most recent call last):",
        ]


def test_avx512_bf16_cpus_get_the_ssm_cache_dtype_vllm_would_reset_to():
    """vLLM's CPU platform resets the SSM state cache to float32 with a warning whenever torch sees AVX512-BF16
    (Zen 4 and Intel AMX CPUs alike); the launcher asks for float32 there and nowhere else."""
    for machine in (ZEN4, SAPPHIRE_RAPIDS):
        choices = {c.name: c.value for c in cpu_choices(machine)}
        assert choices["--mamba-ssm-cache-dtype"] == "float32"
        argv = _command(machine, eager=True).argv
        assert argv[argv.index("--mamba-ssm-cache-dtype") + 1] == "float32"
    assert "--mamba-ssm-cache-dtype" not in _command(AVX2, eager=True).argv


def test_the_dtype_follows_the_cpu():
    """What the servers in this suite run at, by CPU kind: bf16 only where the CPU has it natively."""
    dtype = {m: {c.name: c.value for c in cpu_choices(m)}["--dtype"] for m in (AVX2, ZEN4, SAPPHIRE_RAPIDS)}
    assert dtype == {AVX2: "float32", ZEN4: "bfloat16", SAPPHIRE_RAPIDS: "bfloat16"}
