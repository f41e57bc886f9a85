"""The import graph matches the layering (issue 15: entry point -> commands -> libraries), read from the
source with ``ast.parse`` (nothing is imported or run):

(a) no module but the entry point ``bench/cli.py`` imports ``bench.cli``;
(b) nothing under ``bench/`` imports a framework package (tensorflow, keras, torch, torchvision)
    or a framework implementation (tf_impl, torch_impl);
(c) ``tf_impl/`` and ``torch_impl/`` import no bench module that registers a command (one that
    defines ``register(sub)`` or adds an argparse subparser).

An import is any ``import X`` / ``from X import Y`` anywhere in a module (top level, inside a
function, under ``if TYPE_CHECKING``), with ``from bench import train`` read as ``bench.train``
and relative imports resolved, plus ``importlib.import_module("X")`` / ``__import__("X")``
called with a string literal. Names computed at run time (``bench.workerproto.resolve`` and
``bench.cli.build_parser`` import "module:function" strings from their callers' tables) are not
imports of the module that holds the call; ``bench.runner`` starts ``python -m
{framework}_impl.worker`` as a subprocess, which is no import either.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "tf_impl", "torch_impl")
ENTRY_POINT = "bench.cli"
FRAMEWORKS = ("tensorflow", "keras", "torch", "torchvision", "tf_impl", "torch_impl")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. "tf_impl.train"
    target: str  # dotted module name imported, e.g. "bench.train"
    line: int
    dynamic: bool = False

    def __str__(self) -> str:
        how = "importlib " if self.dynamic else ""
        return f"{self.importer}:{self.line} {how}imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path, tree: ast.Module | None = None) -> list[Import]:
    importer = _module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found = []
    for node in ast.walk(tree or _tree(path)):
        if isinstance(node, ast.Import):
            found += [Import(importer, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(Import(importer, module, node.lineno))
            for alias in node.names:  # from bench import train: a submodule
                if _is_module(f"{module}.{alias.name}"):
                    found.append(Import(importer, f"{module}.{alias.name}", node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in ("import_module", "__import__"):
                found.append(Import(importer, node.args[0].value, node.lineno, dynamic=True))
    return found


def _all_imports() -> list[Import]:
    return [imp for path in _sources() for imp in _imports(path)]


def _registers_a_command(path: Path) -> bool:
    """Defines ``register(sub)`` (one argument) or calls ``.add_parser`` / ``.add_subparsers``."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "register" \
                and len(node.args.args) == 1:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("add_parser", "add_subparsers"):
            return True
    return False


def _command_modules() -> set[str]:
    return {_module_name(p) for p in (REPO / "bench").rglob("*.py") if _registers_a_command(p)}


def _rule_c_offenders() -> list[Import]:
    commands = _command_modules()
    return [imp for imp in _all_imports()
            if imp.importer.split(".")[0] in ("tf_impl", "torch_impl") and imp.target in commands]


def _listing(imports: list[Import]) -> str:
    return "\n".join(f"  {imp}" for imp in imports)


# ---- the reader itself ---------------------------------------------------------------------------------
def test_the_reader_sees_every_module_and_the_kinds_of_import():
    names = {_module_name(p) for p in _sources()}
    assert {"bench", "bench.cli", "bench.options", "tf_impl.worker", "torch_impl.gpu_check"} <= names
    targets = {(imp.importer, imp.target) for imp in _all_imports()}
    assert ("torch_impl.benchmark", "bench.measure") in targets  # from bench import measure as bm
    assert ("torch_impl.gpu_check", "torch_impl.benchmark") in targets  # function-local
    assert ("tf_impl.model", "keras") in targets
    assert {"bench.train", "bench.parity", "bench.report", "bench.cli"} <= _command_modules()
    assert "bench.options" not in _command_modules() and "bench.spec" not in _command_modules()


def test_dynamic_imports_with_a_literal_are_counted():
    source = ("import importlib\nfrom importlib import import_module\nimportlib.import_module('torch')\n"
              "__import__('bench.cli')\nimport_module('tf_impl.model')\nimportlib.import_module(name)\n")
    found = _imports(REPO / "bench" / "probe.py", ast.parse(source))
    assert {(imp.target, imp.dynamic) for imp in found} == {
        ("importlib", False), ("torch", True), ("bench.cli", True), ("tf_impl.model", True)}


# ---- the rules -----------------------------------------------------------------------------------------
def test_a_only_the_entry_point_imports_bench_cli():
    bad = [imp for imp in _all_imports()
           if imp.importer != ENTRY_POINT and (imp.target == ENTRY_POINT or imp.target.startswith(ENTRY_POINT + "."))]
    assert not bad, f"only {ENTRY_POINT} (the entry point) may import it; found:\n{_listing(bad)}"


def test_b_the_core_imports_no_framework():
    bad = [imp for imp in _all_imports()
           if imp.importer.split(".")[0] == "bench" and imp.target.split(".")[0] in FRAMEWORKS]
    assert not bad, f"bench/ must import none of {', '.join(FRAMEWORKS)}; found:\n{_listing(bad)}"


# Rule (c) holds: the framework packages import libraries only (bench.benchmark -> bench.measure,
# bench.manifest -> bench.dataset, bench.train -> bench.training, bench.parity -> bench.parity_spec
# moved). The list of known exceptions stays empty: the next test fails on any new one.
KNOWN_C_OFFENDERS: set[tuple[str, str]] = set()


def test_c_no_new_framework_import_of_a_command_module():
    new = [imp for imp in _rule_c_offenders() if (imp.importer, imp.target) not in KNOWN_C_OFFENDERS]
    assert not new, ("tf_impl/ and torch_impl/ must not import a bench module that registers a command; "
                     f"new since the list in this test:\n{_listing(new)}")


def test_c_the_framework_packages_import_no_command_module():
    bad = _rule_c_offenders()
    assert not bad, ("tf_impl/ and torch_impl/ must not import a bench module that registers a command; "
                     f"found:\n{_listing(bad)}")
