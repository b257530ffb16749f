"""The package's shape: every function reads at once (at most 80 lines, decorators included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cityseg_fast"
LIMIT = 80


def _function_lengths() -> list[tuple[str, int]]:
    """('path:line name', lines) of every function and method in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
                found.append((where, node.end_lineno - start + 1))
    return found


def test_no_function_in_the_package_is_over_80_lines():
    lengths = _function_lengths()
    assert len(lengths) > 300  # it read the package (an empty walk would pass vacuously)
    long = [f"{where} ({n} lines)" for where, n in lengths if n > LIMIT]
    assert not long, f"functions over {LIMIT} lines: " + "; ".join(long)
