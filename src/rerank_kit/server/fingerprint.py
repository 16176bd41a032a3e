"""Fingerprints of another project's source: a function or class as it was verified, not as it is named.

A fingerprint is a hash of the definition's syntax tree with its docstrings left out, written out by a dumper of
our own rather than ``ast.dump`` (whose output changes between Python versions: 3.12 added ``type_params``, 3.13
leaves empty fields out). Formatting, comments and docstrings do not count; any change to code does. The same
definition gives the same fingerprint whether it is read from an installed package (``of_object``) or from a
wheel's source text (``of_source`` / ``find``), so a table filled from wheels is checked at run time.

    >>> of_source("def f(x):\\n    '''Doc.'''\\n    return x + 1  # one\\n") == of_source("def f(x): return (x +\\n 1)")
    True
    >>> of_source("def f(x): return x + 1") == of_source("def f(x): return x + 2")
    False

Standard library only: the vLLM server process and the wheel checker (``python -S -I``) both use it.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import textwrap
from typing import Any

# Fields some Python versions have and others not, or that only say how a literal was spelled.
_IGNORED_FIELDS = frozenset({"type_comment", "type_params", "kind"})
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)


def _canonical(value: Any) -> str:
    if isinstance(value, ast.AST):
        fields = []
        for name in value._fields:
            field = getattr(value, name, None)
            if name in _IGNORED_FIELDS or field is None or field == []:
                continue
            fields.append(f"{name}={_canonical(field)}")
        return f"{type(value).__name__}({','.join(fields)})"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return repr(value)


def _without_docstrings(node: ast.AST) -> ast.AST:
    for definition in ast.walk(node):
        if not isinstance(definition, _DEFINITIONS) or not definition.body:
            continue
        first = definition.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            definition.body = definition.body[1:] or [ast.Pass()]
    return node


def of_node(node: ast.AST) -> str:
    """The fingerprint of one parsed definition (16 hex digits); ``node`` is left as it was."""
    return hashlib.sha256(_canonical(_without_docstrings(copy.deepcopy(node))).encode()).hexdigest()[:16]


def of_source(source: str) -> str:
    """The fingerprint of the first definition in ``source`` (indented source is fine)."""
    return of_node(ast.parse(textwrap.dedent(source)).body[0])


def of_object(obj: Any) -> str:
    """The fingerprint of an imported function, method or class, from its source file."""
    return of_source(inspect.getsource(inspect.unwrap(obj)))


def find(module: str | ast.Module, qualname: str) -> ast.AST | None:
    """The definition ``qualname`` ("f", "Class.method") in a module (its source or its parsed tree), or None."""
    scope: list[ast.stmt] = (ast.parse(module) if isinstance(module, str) else module).body
    node: ast.AST | None = None
    for part in qualname.split("."):
        candidates = [
            n for n in scope
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part
        ]  # fmt: skip
        # an @overload'ed function: the implementation is the last definition of that name
        node = candidates[-1] if candidates else None
        if node is None:
            return None
        scope = getattr(node, "body", [])
    return node
