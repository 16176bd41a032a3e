"""Shim: ``python -m rerank_kit.vllm_api WHEEL [--json]`` is ``python -m rerank_kit.launcher.wheelcheck``."""

import sys

from rerank_kit.launcher.wheelcheck import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
