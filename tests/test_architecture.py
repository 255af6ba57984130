"""The package's shape: imports run one way between layers, no private name crosses a module,
and every error mlprune_fx defines or raises on purpose is an MLPruneError."""

import ast
import builtins
import importlib
import inspect
from pathlib import Path

import pytest

from mlprune_fx.core.errors import MLPruneError

ROOT = Path(__file__).resolve().parents[1]
# folder -> package it is installed as (pyproject maps passes/ and runtime/ into mlprune_fx)
FOLDERS = {"mlprune_fx": "mlprune_fx", "passes": "mlprune_fx.passes", "runtime": "mlprune_fx.runtime"}
# lower layers never import higher ones; the flow's entry points (prepare, convert, ...) are "api"
LAYERS = ["core", "runtime", "passes", "api", "training", "tools"]


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "api"


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [alias.name for alias in node.names]))
    return [(m, names) for m, names in out if m == "mlprune_fx" or m.startswith("mlprune_fx.")]


def test_every_module_is_found():
    assert {"mlprune_fx.core.config", "mlprune_fx.passes.analyze", "mlprune_fx.runtime.ops",
            "mlprune_fx.training.loop", "mlprune_fx.tools.cli", "mlprune_fx.convert"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    mine = LAYERS.index(_layer(module))
    for target, names in _imports(module, MODULES[module]):
        targets = [f"{target}.{n}" if f"{target}.{n}" in MODULES else target for n in names] or [target]
        for t in targets:
            assert LAYERS.index(_layer(t)) <= mine, f"{module} ({_layer(module)}) imports {t} ({_layer(t)})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_a_module(module):
    for target, names in _imports(module, MODULES[module]):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{module} imports private {private} from {target}"


def _defined_exceptions():
    for module in sorted(MODULES):
        if module.endswith("__main__"):
            continue
        loaded = importlib.import_module(module)
        for _, cls in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module:
                yield cls


def test_every_error_class_is_an_mlprune_error():
    classes = list(_defined_exceptions())
    assert len(classes) >= 10
    assert [c.__name__ for c in classes if not issubclass(c, MLPruneError)] == []


# AttributeError stays: a module's __getattr__ must raise it for names it does not have
BUILTIN_ERRORS = {name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, Exception)}
BUILTIN_ERRORS -= {"AttributeError"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_builtin_error_is_raised_on_purpose(module):
    raised = [node.exc.func.id for node in ast.walk(ast.parse(MODULES[module].read_text()))
              if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name)]
    assert [name for name in raised if name in BUILTIN_ERRORS] == []
