"""The package's import graph, read with ``ast`` (module-level and function-level imports alike):
no cycles anywhere; ``runtime/`` reaches no ``export/``, ``nn/`` or torch; ``export/`` reaches no
``runtime/``; ``contract/`` reaches no torch, onnx, ``export/``, ``runtime/`` or ``nn/``.

Edges: every ``import`` / ``from ... import`` statement that can run (imports under
``if TYPE_CHECKING:`` never do and are skipped), resolved to the module it loads -- ``from
ddpm_export.x import y`` is an edge to ``ddpm_export.x.y`` when that is a module -- plus the
packages whose ``__init__`` such an import runs on the way (below the root package, whose
``__init__`` every import runs and which is checked as a module of its own). "Reaches" follows
edges transitively.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ddpm_export"
ROOT = "ddpm_export"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module name an import statement of ``tree`` loads (absolute, external ones too)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    """module -> the modules (ours and external top-level names) its imports load."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets: set[str] = set()
        for imported in _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py"):
            if imported.split(".")[0] != ROOT:
                targets.add(imported.split(".")[0])
                continue
            parts = imported.split(".")
            for i in range(2, len(parts) + 1):  # the packages on the way, then the module itself
                prefix = ".".join(parts[:i])
                if prefix in MODULES and not name.startswith(prefix + ".") and prefix != name:
                    targets.add(prefix)
            if imported == ROOT:
                targets.add(ROOT)
        edges[name] = targets
    return edges


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph().get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _under(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def test_the_walk_sees_lazy_imports():
    """Sanity: function-level imports count (the commands import everything lazily)."""
    assert "ddpm_export.export.onnx" in graph()["ddpm_export.commands.onnx"]
    assert "torch" in reachable("ddpm_export.nn.unet") and "onnx" in reachable("ddpm_export.export.onnx")


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(e for e in edges.get(node, ()) if e in MODULES):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(MODULES):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package, forbidden", [
    ("ddpm_export.runtime", ["ddpm_export.export", "ddpm_export.nn", "torch"]),
    ("ddpm_export.diffusion", ["ddpm_export.export", "ddpm_export.nn", "ddpm_export.runtime", "torch"]),
    ("ddpm_export.export", ["ddpm_export.runtime"]),
    ("ddpm_export.serve", ["ddpm_export.export", "ddpm_export.nn", "torch"]),
    ("ddpm_export.contract", ["ddpm_export.export", "ddpm_export.runtime", "ddpm_export.nn", "torch", "onnx",
                              "onnxruntime"]),
])
def test_layering(package, forbidden):
    modules = _under(set(MODULES), package)
    assert modules
    bad = {m: sorted(f for f in forbidden for hit in [_under(reachable(m), f)] if hit) for m in modules}
    assert not {m: b for m, b in bad.items() if b}, f"{package} reaches what it must not: {bad}"


def test_importing_the_contract_loads_no_torch_or_onnx():
    """The same rule, at run time: every contract module imports without torch, onnx or onnxruntime."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, ddpm_export.contract as c\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module(f'{c.__name__}.{m.name}')\n"
            "loaded = sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules)\n"
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr
