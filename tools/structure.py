#!/usr/bin/env python3
"""The structure of the ``ilt`` package: modules, their size, what they import.

    python tools/structure.py            # markdown table: module, lines, longest function, ilt imports
    python tools/structure.py --check    # exit 1 on any rule below that the code breaks

The rules:

* **Layers.** :data:`LAYERS` lists the feature packages, lowest first; a module
  imports only from its own layer or a lower one. Nearly every entry is a
  package, so the table reads as the directory tree (``docs/architecture.md``).
* **No cycle**, read at module level and inside functions (the package imports
  heavy dependencies lazily, so a cycle could hide there).
* **No private name across modules.** ``from ilt.x import _name`` is refused:
  what another module needs is the public API of its room.
* **Short functions.** No function over :data:`MAX_FUNCTION_LINES` lines, its
  docstring excluded (icefall's "one screen").
* **Unique file names.** No two modules share a file name (``__init__`` aside).

``tests/test_structure.py`` runs the same checks and makes sure each can fail.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ilt"
#: the longest function the project accepts, its docstring excluded
MAX_FUNCTION_LINES = 60

#: Layers, lowest first: a module may import only from its own layer or a
#: lower one. An entry names a package or module and everything below it; the
#: longest matching entry wins. ``ilt`` alone is the package's ``__init__``.
LAYERS: list[tuple[str, ...]] = [
    # foundations: errors, files, the run-time state, language facts; the registry and the
    # protocols it checks components against (hooks, components, the backbone)
    ("ilt", "ilt.errors", "ilt.hookspecs", "ilt.components", "ilt.backbone", "ilt.core", "ilt.data.languages",
     "ilt.data.text"),
    # the configs plugins are chosen and set up by
    ("ilt.config", "ilt.models.generation"),
    # data: manifests, corpora, mixes; Track 2's file formats (corpus preparation writes them)
    ("ilt.data", "ilt.track2.formats"),
    # models on disk: base, hub, lineage, adapters, cards, conversion, export, LID
    ("ilt.models",),
    # recognition: decoding, scoring, pseudo-labels
    ("ilt.asr",),
    # one ILT round; reports over decodes
    ("ilt.training", "ilt.reporting"),
    # features built on rounds and decoding
    ("ilt.knowledge", "ilt.track2", "ilt.experts"),
    # built-in plugins: loaded through the registry, never imported by a feature
    ("ilt.plugins",),
    ("ilt.testing",),
    ("ilt.cli",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The ilt module ``name`` refers to (``ilt.x.y`` may be a module or a name in ``ilt.x``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The ilt modules ``path`` imports, anywhere in the file (not under ``TYPE_CHECKING``)."""
    out = set()
    own = module_name(path) if path.resolve().is_relative_to(ROOT) else None
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "ilt" or name.startswith("ilt."):
                target = _resolve(name, known)
                if target and target != own:
                    out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            hit = name == prefix or (prefix != "ilt" and name.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise KeyError(f"{name}: not in tools/structure.py LAYERS; add it to the right layer")
    return best


def upward_imports(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a module imports from a higher layer."""
    return sorted((a, b) for a, deps in g.items() for b in deps if layer_of(b) > layer_of(a))


def _body_start(node: ast.AST) -> int:
    """Where a function's length is counted from: its ``def`` line, or the
    first statement after its docstring."""
    body = node.body
    doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)
    if not doc:
        return node.lineno
    return body[1].lineno if len(body) > 1 else node.end_lineno


def functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines without the docstring)`` of every function in ``path``."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((f"{prefix}{child.name}", child.end_lineno - _body_start(child) + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(path.read_text(encoding="utf-8")), "")
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return [f"{name}:{fn} ({n} lines)" for name, path in modules().items()
            for fn, n in functions(path) if n > limit]


def private_imports(paths: dict[str, Path] | None = None) -> list[str]:
    """``from ilt.x import _name`` anywhere in the package: ``module:line imports ilt.x._name``."""
    out = []
    for name, path in (paths or modules()).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ilt":
                out += [f"{name}:{node.lineno} imports {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def shared_file_names(paths: dict[str, Path] | None = None) -> list[str]:
    """File names (other than ``__init__.py``) that two modules share."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for name, path in (paths or modules()).items():
        if path.name != "__init__.py":
            by_name[path.name].append(name)
    return [f"{file}: {', '.join(sorted(names))}" for file, names in sorted(by_name.items()) if len(names) > 1]


def table() -> str:
    g = graph()
    rows = ["| module | lines | longest function | imports (ilt) |", "|---|---:|---|---|"]
    for name, path in modules().items():
        fns = functions(path)
        longest = max(fns, key=lambda f: f[1]) if fns else None
        lines = len(path.read_text(encoding="utf-8").splitlines())
        rows.append(f"| {name} | {lines} | {f'{longest[0]} ({longest[1]})' if longest else '-'} | "
                    f"{', '.join(sorted(g[name])) or '-'} |")
    return "\n".join(rows)


def problems() -> list[str]:
    g = graph()
    out = []
    cycle = find_cycle(g)
    if cycle:
        out.append("import cycle: " + " -> ".join(cycle))
    out += [f"upward import: {a} imports {b}" for a, b in upward_imports(g)]
    out += [f"function over {MAX_FUNCTION_LINES} lines without its docstring: {f}" for f in long_functions()]
    out += [f"private name imported across modules: {p}" for p in private_imports()]
    out += [f"file name used twice: {s}" for s in shared_file_names()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a broken rule (see above)")
    args = parser.parse_args()
    if args.check:
        found = problems()
        print("\n".join(found) or "ok: no import cycle, no upward import, no private import, no shared "
                                   f"file name, no function over {MAX_FUNCTION_LINES} lines")
        sys.exit(1 if found else 0)
    print(table())


if __name__ == "__main__":
    main()
