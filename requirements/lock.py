"""Resolve one set of rerank-kit extras once and write it as a lock file (`make lock` runs this).

    python requirements/lock.py cpu,default-model requirements/serve-cpu.lock

pip resolves ``.[EXTRAS]`` without installing anything (``--dry-run --report``) and every package it
would install is written as ``name==version``. `make` installs a lock with ``--no-deps`` (no resolver
at all), then rerank-kit itself. A lock holds for the interpreter and platform it was made on: the
header says which, and the Makefile falls back to the extras' version ranges elsewhere.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def resolve(extras: str, pip_args: list[str]) -> list[tuple[str, str]]:
    env = dict(os.environ)
    if "gpu" in extras.split(","):
        # The CUDA stack at the release verified for real (and that modal_app.py pins), resolved from the
        # package index alone: a machine's local CPU torch wheels (PIP_FIND_LINKS, pip config) must not
        # stand in for the CUDA build.
        from rerank_kit.launcher.vllm import DEFAULT_VLLM_VERSION

        pip_args = [*pip_args, f"vllm=={DEFAULT_VLLM_VERSION}"]
        env.pop("PIP_FIND_LINKS", None)
        env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
             "--disable-pip-version-check", "--report", str(report), *pip_args, f"{ROOT}[{extras}]"],
            check=True,
            env=env,
        )  # fmt: skip
        items = json.loads(report.read_text())["install"]
    pins = {(i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in items}
    return sorted(p for p in pins if p[0] != "rerank-kit")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    extras, out, *pip_args = argv
    started = time.monotonic()
    pins = resolve(extras, pip_args)
    header = [
        f"# rerank-kit[{extras}], resolved by `make lock` on {time.strftime('%Y-%m-%d')} for CPython "
        f"{platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]} on {sys.platform} "
        f"{platform.machine()} in {time.monotonic() - started:.0f} s. Install with pip --no-deps -r.",
    ]
    Path(out).write_text("\n".join(header + [f"{name}=={version}" for name, version in pins]) + "\n")
    print(f"{out}: {len(pins)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
