"""The table of vLLM requirements (rerank_kit.server.compat) checked against the importable vllm, for tests:
test_vllm_api.py compares it with the static check of the same tree. Imports what it checks (seconds: torch)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rerank_kit.launcher.vllm import server_parser
from rerank_kit.launcher.vllm_source import SourceTree
from rerank_kit.launcher.wheelcheck import static_finding
from rerank_kit.server.compat import Finding, judge, object_sig, select


def _installed_flags() -> set[str]:
    try:
        return set(server_parser()._option_string_actions)
    except ImportError:
        return set()


def check_installed(*, users: Iterable[str] | None = None) -> list[Finding]:
    """The table checked against the importable vllm; imports what it checks (seconds: torch)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("vllm is not installed")
    static = SourceTree(Path(next(iter(spec.submodule_search_locations))))
    version = static.version()
    selected = select(users)
    flags = _installed_flags() if any(r.kind == "flag" for r in selected) else set()
    findings = []
    for req in selected:
        if req.kind in ("flag", "env", "mention", "entrypoint"):
            # flags come from the real parser (passed in); files that are read, not run, are read the static way
            findings.append(static_finding(static, req, version, flags))
            continue
        try:
            obj: Any = importlib.import_module(req.module)
            for step in req.target.split(".") if req.target else []:
                name, _, key = step.partition("[")
                obj = getattr(obj, name)[key.rstrip("]")] if key else getattr(obj, name)
            sig = object_sig(obj) if req.kind == "signature" else None
        except Exception as exc:  # a broken vLLM module raises anything: report it, never crash the caller
            findings.append(judge(req, version, False, where=f"{type(exc).__name__}: {exc}"[:200]))
            continue
        findings.append(judge(req, version, True, sig))
    return findings
