"""Size limits of issue 15, read from the source with ``ast`` (nothing imported): no function or
method over 80 lines in bench/, tf_impl/, torch_impl/, and no module in bench/ over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "tf_impl", "torch_impl")
MAX_FUNCTION_LINES = 80
MAX_BENCH_MODULE_LINES = 600


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function in ``source`` longer than ``limit`` lines
    (decorators excluded, the docstring included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


def test_the_reader_measures_functions_and_methods():
    body = "\n".join(f"        x{i} = {i}" for i in range(81))
    source = f"def short():\n    return 1\n\nclass C:\n    def long(self):\n{body}\n"
    assert long_functions(source, MAX_FUNCTION_LINES) == [("long", 5, 82)]
    assert long_functions(source, 82) == []


def test_no_function_over_80_lines():
    offenders = [f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
                 for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
                 for name, line, length in long_functions(path.read_text(), MAX_FUNCTION_LINES)]
    assert not offenders, "functions over 80 lines:\n" + "\n".join(offenders)


def test_no_bench_module_over_600_lines():
    sizes = {path.relative_to(REPO): len(path.read_text().splitlines()) for path in (REPO / "bench").rglob("*.py")}
    assert sizes, "no bench modules found"
    offenders = [f"{path} ({n} lines)" for path, n in sorted(sizes.items()) if n > MAX_BENCH_MODULE_LINES]
    assert not offenders, "bench modules over 600 lines:\n" + "\n".join(offenders)
