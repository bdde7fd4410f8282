#!/usr/bin/env python3
"""The structure of the ``ilt`` package: modules, their size, what they import.

    python tools/structure.py            # markdown table: module, lines, longest function, ilt imports
    python tools/structure.py --check    # exit 1 on an import cycle, an upward import or a function > 80 lines

Imports are read with ``ast``, at module level and inside functions (the
package imports heavy dependencies lazily, so a cycle could hide there).
``tests/test_structure.py`` runs the same checks.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ilt"
#: the longest function the project accepts (icefall's "one screen")
MAX_FUNCTION_LINES = 80

#: Layers, lowest first: a module may import only from its own layer or a
#: lower one (``fnmatch``-free prefixes; the first matching entry wins).
LAYERS: list[tuple[str, ...]] = [
    ("ilt", "ilt.errors", "ilt.utils", "ilt.journal", "ilt.hookspecs", "ilt.hub"),
    ("ilt.config", "ilt.data.languages", "ilt.data.text", "ilt.data.audio", "ilt.data.manifests",
     "ilt.backbone", "ilt.components", "ilt.generation", "ilt.lid"),
    ("ilt.data", "ilt.score", "ilt.adapter", "ilt.lineage", "ilt.modelcard", "ilt.plugins"),
    ("ilt.plugins.", "ilt.lora", "ilt.fusion", "ilt.distill", "ilt.checkpoint", "ilt.decode", "ilt.convert",
     "ilt.export", "ilt.model_packages", "ilt.testing"),
    ("ilt.evaluate", "ilt.report", "ilt.report_html", "ilt.pseudo", "ilt.augment", "ilt.sessions"),
    ("ilt.train", "ilt.experts"),
    ("ilt.commands.common",),
    ("ilt.commands",),
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
            hit = name == prefix or (prefix.endswith(".") and name.startswith(prefix)) or \
                (not prefix.endswith(".") and name.startswith(prefix + "."))
            if hit and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise KeyError(f"{name}: not in tools/structure.py LAYERS; add it to the right layer")
    return best


def upward_imports(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a module imports from a higher layer."""
    return sorted((a, b) for a, deps in g.items() for b in deps if layer_of(b) > layer_of(a))


def functions(path: Path) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function in ``path``."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((f"{prefix}{child.name}", child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(path.read_text(encoding="utf-8")), "")
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return [f"{name}:{fn} ({n} lines)" for name, path in modules().items()
            for fn, n in functions(path) if n > limit]


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
    out += [f"function over {MAX_FUNCTION_LINES} lines: {f}" for f in long_functions()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a cycle, an upward import or a long function")
    args = parser.parse_args()
    if args.check:
        found = problems()
        print("\n".join(found) or "ok: no import cycle, no upward import, no function over "
                                   f"{MAX_FUNCTION_LINES} lines")
        sys.exit(1 if found else 0)
    print(table())


if __name__ == "__main__":
    main()
