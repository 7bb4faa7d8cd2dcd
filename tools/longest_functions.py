"""Print the longest functions of the package (lines from ``def`` to the end of the body, decorators not counted).

Usage: ``python tools/longest_functions.py [--top N] [--limit L] [PATH]``; exits 1 when ``--limit``
is given and a function is longer (the project aims at <= 60 lines per function).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """``(lines, "file:line name")`` for every function and method under ``root`` (a folder, or
    one ``.py`` file)."""
    out = []
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("path", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "ddpm_export",
                        help="a folder or .py file (default: the package, wherever this is run from)")
    parser.add_argument("--top", type=int, default=10, help="how many of the longest to print (>= 0)")
    parser.add_argument("--limit", type=int, default=None, help="exit 1 when a function is longer than this")
    args = parser.parse_args()
    if args.top < 0:
        parser.error(f"--top must be >= 0, got {args.top}")
    if not args.path.exists() or (args.path.is_file() and args.path.suffix != ".py"):
        parser.error(f"{args.path}: no such folder or .py file")  # an empty result would pass any --limit
    lengths = function_lengths(args.path)
    if not lengths:
        parser.error(f"{args.path}: holds no Python function")
    for n, where in lengths[: args.top]:
        print(f"{n:4d}  {where}")
    over = [w for n, w in lengths if args.limit is not None and n > args.limit]
    if over:
        print(f"{len(over)} function(s) over {args.limit} lines", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
