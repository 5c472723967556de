"""The ML package stays pure: no Prefect, no pickle, nothing done at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import taxiops.ml

ML_DIR = Path(taxiops.ml.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_prefect_or_pickle() -> None:
    for path in sorted(ML_DIR.glob("*.py")):
        assert not {"prefect", "pickle", "joblib", "cloudpickle"} & _imported_modules(path), (
            path.name
        )


def test_importing_the_package_loads_no_prefect_and_writes_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, taxiops.ml; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_public_name_resolves_to_itself_not_a_submodule() -> None:
    import importlib
    import types

    for path in ML_DIR.glob("*.py"):  # importing a submodule sets it as a package attribute
        importlib.import_module(f"taxiops.ml.{path.stem}")
    for name in taxiops.ml.__all__:
        assert not isinstance(getattr(taxiops.ml, name), types.ModuleType), name


def test_loading_the_training_flow_does_not_import_pandas_or_xgboost() -> None:
    """A flow run reports Running before it pays ~0.5 s for the ML libraries."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; sys.path.insert(0, '.'); import flows.train; "
        "print(sorted(m for m in ('pandas', 'xgboost', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
