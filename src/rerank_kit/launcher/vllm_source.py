"""A vLLM source tree read with ``ast``, never imported: where a name is defined, what it takes, which flags
the API server's parser registers. Works on a CUDA wheel on a machine without a GPU.

    tree = SourceTree(Path("/tmp/wheels/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"))
    tree.resolve("vllm.entrypoints.llm", "LLM.score")  # -> ("vllm.entrypoints.pooling.offline", <FunctionDef>)
"""

from __future__ import annotations

import ast
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from rerank_kit.server.compat import PARSER_MODULES, Sig, function_sig, self_attributes


def names_in(tree: ast.AST) -> set[str]:
    """String constants, names and attribute names a module uses."""
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            names.add(n.value)
        elif isinstance(n, ast.Name | ast.Attribute):
            names.add(n.id if isinstance(n, ast.Name) else n.attr)
    return names


def has_main(tree: ast.Module) -> bool:
    """Runnable with ``python -m``: an ``if __name__ == "__main__":`` block at the top level."""
    return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A body's statements, including those under if/try (TYPE_CHECKING imports, fallbacks)."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.Try):
            for block in (node.body, node.orelse, *(h.body for h in getattr(node, "handlers", []))):
                yield from _statements(block)


def _assigned(node: ast.AST) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return [t.id for t in targets if isinstance(t, ast.Name)]


Hit = tuple[str, ast.AST | None]  # (module, node); node None: a module, or a name from outside vllm


class SourceTree:
    """A vLLM source tree: a directory holding ``vllm/`` (site-packages), ``vllm/`` itself, or a wheel."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path) if path.is_file() else None
        self._names = set(self._zip.namelist()) if self._zip else None
        self.root = path.parent if path.name == "vllm" else path
        self._trees: dict[str, ast.Module | None] = {}
        if self.file("vllm") is None:
            raise FileNotFoundError(f"{path}: no vllm package here (give a wheel, site-packages or a vllm directory)")

    def _read(self, name: str) -> str | None:
        if self._zip is not None and self._names is not None:
            return self._zip.read(name).decode("utf-8", "replace") if name in self._names else None
        path = self.root / name
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    def file(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for name in (f"{base}.py", f"{base}/__init__.py"):
            if name in self._names if self._names is not None else (self.root / name).is_file():
                return name
        return None

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            text = self._read(self.file(module) or "")
            self._trees[module] = ast.parse(text) if text is not None else None
        return self._trees[module]

    def version(self) -> str | None:
        """The release, from ``vllm/_version.py`` (which every wheel has; a git checkout has none)."""
        match = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", self._read("vllm/_version.py") or "")
        return match.group(1) if match else None

    def _absolute(self, module: str, relative: str, level: int) -> str:
        if not level:
            return relative
        package = module if (self.file(module) or "").endswith("__init__.py") else module.rpartition(".")[0]
        parts = package.split(".")
        return ".".join([*parts[: len(parts) - level + 1], *([relative] if relative else [])])

    def lookup(self, module: str, name: str, depth: int = 0) -> Hit | None:
        """Where top-level ``name`` of ``module`` is defined, following ``from ... import``."""
        tree = self.tree(module)
        if tree is None or depth > 8:
            return None if module.startswith("vllm") else (module, None)
        found: Hit | None = None
        for node in _statements(tree.body):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                found = (module, node)  # the last definition wins: @overload stubs come first
            elif name in _assigned(node) and not (found and isinstance(found[1], ast.ClassDef | ast.FunctionDef)):
                found = (module, node)
            elif isinstance(node, ast.ImportFrom) and found is None:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        source = self._absolute(module, node.module or "", node.level)
                        if self.file(f"{source}.{alias.name}"):
                            return (f"{source}.{alias.name}", None)
                        found = self.lookup(source, alias.name, depth + 1)
        return found

    def _classes(self, module: str, cls: ast.ClassDef, depth: int = 0) -> Iterator[tuple[str, ast.ClassDef]]:
        """``cls`` and its bases, depth first: a static stand-in for the MRO."""
        yield module, cls
        for base in cls.bases:
            name = getattr(base.value if isinstance(base, ast.Subscript) else base, "id", None)
            hit = self.lookup(module, name) if name and depth < 10 else None
            if hit and isinstance(hit[1], ast.ClassDef):
                yield from self._classes(hit[0], hit[1], depth + 1)

    def _member(self, module: str, cls: ast.ClassDef, name: str) -> Hit | None:
        for mod, klass in self._classes(module, cls):
            hits = [n for n in klass.body if getattr(n, "name", None) == name or name in _assigned(n)]
            if hits:
                return mod, hits[-1]
        return None

    def _entry(self, module: str, node: ast.AST, key: str) -> Hit | None:
        """``Registry[key]`` for ``{"key": Cls}`` or ``{p.name: p for p in [A, B]}`` (classes with ``name = key``)."""
        value = getattr(node, "value", None)
        if isinstance(value, ast.Dict):
            items = [v for k, v in zip(value.keys, value.values, strict=True) if getattr(k, "value", None) == key]
        elif isinstance(value, ast.DictComp) and isinstance(value.generators[0].iter, ast.List | ast.Tuple):
            items = value.generators[0].iter.elts
        else:
            return None
        for item in items:
            hit = self.lookup(module, item.id) if isinstance(item, ast.Name) else None
            if not hit or not isinstance(hit[1], ast.ClassDef):
                continue
            if isinstance(value, ast.Dict):
                return hit
            attr = self._member(hit[0], hit[1], "name")
            if attr and getattr(getattr(attr[1], "value", None), "value", None) == key:
                return hit
        return None

    def resolve(self, module: str, target: str) -> Hit | None:
        """What ``target`` (``Name``, ``Cls.method``, ``Registry[key].method``) names in ``module``."""
        hit: Hit | None = (module, self.tree(module)) if self.tree(module) is not None else None
        for step in target.split(".") if target else []:
            if hit is None or hit[1] is None:
                return hit
            name, _, key = step.partition("[")
            if isinstance(hit[1], ast.Module):
                hit = self.lookup(hit[0], name)
            elif isinstance(hit[1], ast.ClassDef):
                hit = self._member(hit[0], hit[1], name)
            else:
                return None
            if key and hit is not None and hit[1] is not None:
                hit = self._entry(hit[0], hit[1], key.rstrip("]"))
        return hit

    def sig(self, hit: Hit) -> Sig | None:
        """A function's parameters, or a class's members (fields, ``__init__`` parameters, ``self.x``)."""
        module, node = hit
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return function_sig(node)
        if not isinstance(node, ast.ClassDef):
            return None
        names: set[str] = set()
        for _, klass in self._classes(module, node):
            for child in klass.body:
                names.update(_assigned(child))
                if isinstance(child, ast.FunctionDef) and child.name == "__init__":
                    names.update(function_sig(child).keyword)
            names |= self_attributes(klass)
        return Sig((), frozenset(names))

    def flags(self) -> set[str]:
        """The API server parser's option strings. vLLM registers engine flags by name
        (``add_argument("--max-model-len", **kwargs["max_model_len"])`` in engine/arg_utils.py) and the
        frontend flags from the fields of its ``*FrontendArgs`` dataclasses, as ``f"--{key.replace('_', '-')}"``
        (no ``--no-x`` twins); both are read from the files ``make_arg_parser`` uses."""
        parser = next((m for m in PARSER_MODULES if self.lookup(m, "make_arg_parser")), None)
        if parser is None:
            return set()
        modules = {parser, "vllm.engine.arg_utils"}
        for node in ast.walk(self.tree(parser)):  # type: ignore[arg-type]
            if isinstance(node, ast.ImportFrom) and any(a.name.endswith("Args") for a in node.names):
                modules.add(self._absolute(parser, node.module or "", node.level))
        flags: set[str] = set()
        for tree in filter(None, map(self.tree, modules)):
            generated = False
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                    for arg in node.args:
                        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                            flags.add(arg.value)
                        generated |= isinstance(arg, ast.JoinedStr) and getattr(arg.values[0], "value", "") == "--"
            if generated:
                for cls in (c for c in tree.body if isinstance(c, ast.ClassDef) and c.name.endswith("Args")):
                    flags |= {"--" + n.replace("_", "-") for node in cls.body for n in _assigned(node)}
        return flags
