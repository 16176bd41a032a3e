"""The three rooms hold in a real interpreter: what the vLLM server loads pulls in no client or operator code,
and the wheel checker runs on the standard library alone. (import-linter checks the import graph statically:
`make lint`.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rerank_kit

# The src directory of the rerank_kit under test, so the child interpreters import the same code.
SRC = str(Path(rerank_kit.__file__).resolve().parent.parent)
FORBIDDEN_IN_SERVER = ("rerank_kit.client", "rerank_kit.launcher", "rerank_kit.cli", "rerank_kit.bench", "httpx")


def _modules_after(code: str) -> list[str]:
    script = f"import sys; sys.path.insert(0, {SRC!r}); {code}; import json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    ["rerank_kit.server.plugin", "rerank_kit.vllm_plugin", "rerank_kit.server.guard", "rerank_kit.guard"],
)
def test_what_the_vllm_server_imports_loads_no_client_launcher_or_httpx(module):
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    assert [m for m in loaded if m.startswith(FORBIDDEN_IN_SERVER)] == []


def test_the_package_loads_the_client_only_when_a_client_name_is_used():
    assert [m for m in _modules_after("import rerank_kit") if m.startswith(FORBIDDEN_IN_SERVER)] == []
    assert "httpx" in _modules_after("import rerank_kit; rerank_kit.RerankClient")


def test_the_wheel_checker_runs_with_the_standard_library_alone(tmp_path):
    """`python -S -I`: no site-packages (so no httpx, pydantic, orjson), no PYTHONPATH, no current directory."""
    tree = tmp_path / "site"
    (tree / "vllm").mkdir(parents=True)
    (tree / "vllm" / "__init__.py").write_text("")
    (tree / "vllm" / "_version.py").write_text("__version__ = version = '0.32.0'\n")
    script = (
        f"import runpy, sys; sys.path.insert(0, {SRC!r}); sys.argv = ['vllm_api', {str(tree)!r}, '--json']; "
        "runpy.run_module('rerank_kit.vllm_api', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-S", "-I", "-c", script], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["version"] == "0.32.0" and report["findings"]
    assert done.returncode == 1  # an empty vllm package misses what rerank-kit needs
