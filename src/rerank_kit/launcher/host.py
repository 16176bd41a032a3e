"""Facts about the host a server starts on, read once by :func:`detect`: usable cores, CPU flags, memory,
NVIDIA GPUs, preloadable libraries (Linux, from /proc), and on a Mac the CPU's facts from ``sysctl`` and
``vm_stat`` (``MacFacts``). No decisions here: ``machine`` (the CPU-backend defaults) and ``apple`` (what
serves on a Mac) take these facts as arguments, so tests simulate any host.

    >>> is_apple_silicon("Darwin", "arm64"), is_apple_silicon("Darwin", "x86_64"), is_apple_silicon("Linux", "arm64")
    (True, False, False)
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    """What the launcher needs to know about the host."""

    cpu_count: int
    cpu_flags: frozenset[str]
    total_memory: int
    available_memory: int
    gpus: int
    tcmalloc: str | None = None
    iomp: str | None = None
    # An Apple Silicon Mac's CPU facts (MacFacts, below); None on any other host.
    mac: MacFacts | None = None

    @property
    def has_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def bf16_fast(self) -> bool:
        return bool({"amx_bf16", "avx512_bf16"} & self.cpu_flags)


def is_apple_silicon(system: str, machine: str) -> bool:
    """True for macOS on arm64: ``platform.system()`` and ``platform.machine()`` of the running Python."""
    return system == "Darwin" and machine == "arm64"


@dataclass(frozen=True)
class MacFacts:
    """What macOS says about its CPU (``read_mac``); build one to simulate a Mac.

    >>> MacFacts("arm64", chip="Apple M1", performance_cores=4, efficiency_cores=4).apple_silicon
    True
    >>> MacFacts("x86_64", translated=True).apple_silicon
    False
    """

    # platform.machine() of this Python: "arm64", or "x86_64" on an Intel Mac or under Rosetta 2.
    arch: str
    chip: str = ""  # machdep.cpu.brand_string, e.g. "Apple M2 Pro"
    performance_cores: int = 0  # hw.perflevel0.physicalcpu (0: not reported)
    efficiency_cores: int = 0  # hw.perflevel1.physicalcpu
    bf16: bool = False  # hw.optional.arm.FEAT_BF16: M2 and later
    translated: bool = False  # sysctl.proc_translated: x86_64 code run by Rosetta 2 on Apple Silicon

    @property
    def apple_silicon(self) -> bool:
        return self.arch == "arm64" and not self.translated

    @property
    def name(self) -> str:
        return self.chip or "this Mac"


def sysctl_value(key: str) -> str | None:
    """``sysctl -n KEY``, or None when macOS does not have the key (or this is not macOS)."""
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def read_mac(arch: str | None = None, sysctl: Callable[[str], str | None] = sysctl_value) -> MacFacts:
    """This Mac's CPU facts. ``sysctl`` maps a key to its value (tests pass ``dict.get``).

    >>> read_mac("arm64", {"hw.perflevel0.physicalcpu": "8", "hw.optional.arm.FEAT_BF16": "1"}.get).bf16
    True
    """
    return MacFacts(
        arch=arch or platform.machine(),
        chip=sysctl("machdep.cpu.brand_string") or "",
        performance_cores=_int(sysctl("hw.perflevel0.physicalcpu")),
        efficiency_cores=_int(sysctl("hw.perflevel1.physicalcpu")),
        bf16=sysctl("hw.optional.arm.FEAT_BF16") == "1",
        translated=sysctl("sysctl.proc_translated") == "1",
    )


def parse_vm_stat(text: str) -> int:
    """Available memory in bytes from ``vm_stat`` output: free + speculative + inactive pages.

    That is psutil's macOS "available", which vLLM's CPU worker compares its memory request against.

        >>> parse_vm_stat("Mach Virtual Memory Statistics: (page size of 16384 bytes)\\n"
        ...               "Pages free:  100.\\nPages inactive:  50.\\nPages speculative:  10.\\n")
        2621440
    """
    page = 4096
    pages = {}
    for line in text.splitlines():
        if "page size of" in line:
            page = _int(line.split("page size of", 1)[1].split()[0])
        key, _, value = line.partition(":")
        pages[key.strip()] = _int(value.strip().rstrip("."))
    return page * sum(pages.get(k, 0) for k in ("Pages free", "Pages speculative", "Pages inactive"))


def vm_stat_text() -> str:
    try:
        return subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def detect_mac(
    *,
    arch: str | None = None,
    sysctl: Callable[[str], str | None] | None = None,
    vm_stat: Callable[[], str] | None = None,
    cpu_count: int | None = None,
) -> Machine:
    """The ``Machine`` for this Mac, which has no /proc: cores from ``os.cpu_count``, memory from ``sysctl``
    and ``vm_stat``, the CPU's facts in ``Machine.mac``. :func:`detect` calls it on macOS.
    """
    sysctl = sysctl or sysctl_value
    total = _int(sysctl("hw.memsize"))
    available = parse_vm_stat((vm_stat or vm_stat_text)()) or total
    return Machine(
        cpu_count=cpu_count or os.cpu_count() or 1,
        cpu_flags=frozenset(),
        total_memory=total,
        available_memory=min(available, total) if total else available,
        gpus=0,  # no CUDA on a Mac; the GPU is reached only through vllm-metal, which rerank-kit does not use
        mac=read_mac(arch, sysctl),
    )


def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _meminfo() -> tuple[int, int]:
    total = available = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            value = int(rest.split()[0]) * 1024 if rest.split() else 0
            if key == "MemTotal":
                total = value
            elif key == "MemAvailable":
                available = value
    except (OSError, ValueError):
        pass
    return total, available or total


def _gpu_count() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _find_library(names: tuple[str, ...], extra_dirs: tuple[Path, ...]) -> str | None:
    for directory in extra_dirs:
        for name in names:
            candidate = directory / name
            if candidate.exists():
                return str(candidate)
    for name in names:
        stem = name.removeprefix("lib").split(".so")[0]
        found = ctypes.util.find_library(stem)
        if found:
            for directory in (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib")):
                if (directory / found).exists():
                    return str(directory / found)
    return None


def detect() -> Machine:
    """Read the host: usable cores, CPU flags, memory, NVIDIA GPUs, preloadable libraries."""
    if sys.platform == "darwin":
        return detect_mac()  # macOS has no /proc: cores, memory and the CPU's facts come from sysctl and vm_stat
    total, available = _meminfo()
    lib_dirs = (Path(sys.prefix) / "lib", Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"))
    return Machine(
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        cpu_flags=_cpu_flags(),
        total_memory=total,
        available_memory=available,
        gpus=_gpu_count(),
        tcmalloc=_find_library(("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"), lib_dirs),
        iomp=_find_library(("libiomp5.so",), lib_dirs),
    )
