"""The wheel checker: rerank-kit's table of vLLM requirements (``rerank_kit.server.compat``) checked against a
vLLM source tree or wheel read with ``ast``; nothing is imported, so it works for a CUDA wheel on a CPU machine.

Standard library only, so it runs without rerank-kit's dependencies (``python -S -I``). Command line (exit 1 on
a missing requirement; ``python -m rerank_kit.vllm_api`` is the same command)::

    python -m rerank_kit.launcher.wheelcheck /tmp/wheels/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl [--json]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from rerank_kit.launcher.vllm_source import SourceTree, has_main, names_in
from rerank_kit.server import fingerprint
from rerank_kit.server.compat import Finding, Requirement, judge, select


def static_finding(tree: SourceTree, req: Requirement, version: str | None, flags: set[str]) -> Finding:
    """Requirement ``req`` judged on ``tree`` read as text; ``flags``: the API server parser's option strings."""
    module = tree.tree(req.module)
    if req.kind == "flag":
        return judge(req, version, req.target in flags)
    if req.kind in ("env", "mention"):
        return judge(req, version, module is not None and req.target in names_in(module))
    if req.kind == "entrypoint":
        return judge(req, version, module is not None and has_main(module))
    hit = tree.resolve(req.module, req.target)
    sig = tree.sig(hit) if req.kind == "signature" and hit is not None else None
    where = f"{hit[0]}:{getattr(hit[1], 'lineno', '')}".rstrip(":") if hit else ""
    return dataclasses.replace(judge(req, version, hit is not None, sig, where), body=static_body(tree, req))


def static_body(tree: SourceTree, req: Requirement) -> str:
    """The fingerprint of the definition row ``req`` pins, read from ``tree`` ("" when the row pins none)."""
    if not req.body:
        return ""
    module, qualname = req.body.split(":", 1)
    parsed = tree.tree(module)
    node = fingerprint.find(parsed, qualname) if parsed is not None else None
    return fingerprint.of_node(node) if node is not None else "absent"


def check_source(root: Path, *, users: Iterable[str] | None = None, version: str | None = None) -> list[Finding]:
    """The table checked against a vLLM source tree or ``.whl``, without importing it.

    ``version`` defaults to the tree's own; ``users`` keeps the rows of those users only.
    """
    tree = SourceTree(Path(root))
    version = version or tree.version()
    selected = select(users)
    flags = tree.flags() if any(r.kind == "flag" for r in selected) else set()
    return [static_finding(tree, req, version, flags) for req in selected]


def format_table(findings: list[Finding]) -> str:
    """Aligned columns for a person: status, requirement, what, users, releases, body, detail; then, for a new
    release, the definitions whose bodies changed: what to read before adding a pin."""
    rows = [("status", "requirement", "what", "users", "releases", "body", "detail")]
    for f in findings:
        r = f.requirement
        what = f"{r.module}:{r.target}" if r.module and r.target else r.module or r.target
        releases = f"{r.since or ''}-{r.until or ''}" if r.since or r.until else "all"
        rows.append((f.status, r.key, what, ",".join(r.users), releases, _body_cell(f), f.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    table = "\n".join("  ".join([*map(str.ljust, row[:6], widths), row[6]]).rstrip() for row in rows)
    declined = [f for f in findings if f.body and any(f.body == pin for pin, _ in f.requirement.declined)]
    if declined:
        heading = "Reviewed and left to vLLM's own code (the plugin steps aside; the row's note says why):"
        table = "\n".join([table, "", heading, *(f"  {f.requirement.body} ({f.requirement.key}): {f.body}: "
                                                 f"{f.requirement.note}" for f in declined)])  # fmt: skip
    changed = [f for f in findings if f.body_changed]
    if not changed:
        return table
    lines = [f"  {f.requirement.body} ({f.requirement.key}): {f.body}; verified bodies: "
             + ", ".join(f"{pin} ({releases})" for pin, releases in f.requirement.pins) for f in changed]  # fmt: skip
    heading = "Changed bodies (the plugin steps aside from each until it is reviewed and pinned):"
    return "\n".join([table, "", heading, *lines])


def _body_cell(f: Finding) -> str:
    if not f.body:
        return ""
    if f.body == "absent":
        return "absent"
    if f.body_changed:
        return "CHANGED"
    return next(
        releases if (pin, releases) in f.requirement.pins else f"{releases}: vLLM's own"
        for pin, releases in (*f.requirement.pins, *f.requirement.declined)
        if pin == f.body
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [a for a in args if a != "--json"]
    if len(paths) != 1:
        print("usage: python -m rerank_kit.launcher.wheelcheck PATH_OR_WHEEL [--json]", file=sys.stderr)
        return 2
    try:
        version = SourceTree(Path(paths[0])).version()
    except (OSError, zipfile.BadZipFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    findings = check_source(Path(paths[0]))
    if "--json" in args:
        rows = [{**asdict(f.requirement), "status": f.status, "detail": f.detail, "body": f.body,
                 "body_changed": f.body_changed} for f in findings]  # fmt: skip
        checked = time.strftime("%Y-%m-%d")
        print(json.dumps({"path": paths[0], "version": version, "date": checked, "findings": rows}, indent=2))
    else:
        print(f"vLLM {version or '(unknown version)'} at {paths[0]}\n{format_table(findings)}")
    return 1 if any(f.failed for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
