"""Reading documents and rerank cases from the files users point the CLI at.

Documents: a JSON list of strings or of objects with a "text" field, JSONL with one such item per
line, a JSON object with a "documents" list, or plain text with one document per line.

Cases: a JSON list (or JSONL) of ``{"query": ..., "documents": [...]}`` objects, or one such object,
optionally with "name", "instruction" and "top_n".

    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "docs.json"
    >>> _ = p.write_text(json.dumps(["a", {"text": "b", "id": 7}]))
    >>> load_documents(p)
    ['a', {'text': 'b', 'id': 7}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank_kit.errors import InvalidInputError


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"file {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_items(path: Path, text: str) -> list[Any] | None:
    """A JSON list, a single JSON object (returned as a one-item list), or JSONL; None for plain text."""
    stripped = text.lstrip()
    if not stripped.startswith(("[", "{")):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("["):
            raise InvalidInputError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    else:
        return list(data) if isinstance(data, list) else [data]
    items = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028/U+0085, which json.dumps leaves
    # unescaped with ensure_ascii=False and which real corpora (MS MARCO) contain.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{lineno}: invalid JSON line: {exc.msg}") from None
    return items


def load_documents(path: str | Path) -> list[str | dict[str, Any]]:
    """Documents from ``path``: strings, or dicts that carry a "text" field plus metadata."""
    path = Path(path)
    text = _read(path)
    items = _json_items(path, text)
    if items is None:
        items = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    elif len(items) == 1 and isinstance(items[0], dict) and isinstance(items[0].get("documents"), list):
        items = list(items[0]["documents"])  # a case file: {"query": ..., "documents": [...]}
    for i, item in enumerate(items):
        if not isinstance(item, str) and not (isinstance(item, dict) and isinstance(item.get("text"), str)):
            raise InvalidInputError(
                f'{path}: document {i} is {type(item).__name__}; use a string or an object with a "text" string'
            )
    if not items:
        raise InvalidInputError(f"{path} holds no documents")
    return items


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    """Rerank cases from ``path``: objects with "query" and "documents" (and optional name/instruction/top_n)."""
    path = Path(path)
    items = _json_items(path, _read(path))
    if not items:
        raise InvalidInputError(f'{path}: expected a JSON list (or JSONL) of {{"query", "documents"}} objects')
    for i, case in enumerate(items):
        if (
            not isinstance(case, dict)
            or not isinstance(case.get("query"), str)
            or not isinstance(case.get("documents"), list)
        ):
            raise InvalidInputError(f'{path}: case {i} needs a "query" string and a "documents" list')
    return items
