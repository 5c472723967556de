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
