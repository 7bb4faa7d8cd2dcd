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
    """``(lines, "file:line name")`` for every function and method under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="ddpm_export")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    lengths = function_lengths(Path(args.path))
    for n, where in lengths[: args.top]:
        print(f"{n:4d}  {where}")
    over = [w for n, w in lengths if args.limit is not None and n > args.limit]
    if over:
        print(f"{len(over)} function(s) over {args.limit} lines", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
