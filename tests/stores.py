"""A blank MLflow store, made once per test process and copied into each new home.

MLflow builds a new SQLite store on first open by running its ~130 migration scripts
(about 1.5 s here); a copy of a store made that way is the same file, in milliseconds. The
copy holds MLflow's schema and its `Default` experiment only: each home still makes its own
`taxi-duration` experiment and store identity (the cache key of the registry steps) on first
use. The first-start tests (tests/e2e/test_up.py, tests/e2e/test_wheel.py) do not use it, so
a new store is still built the way a user's first run builds it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path


@cache
def blank_mlflow_db() -> Path:
    """An MLflow SQLite store that MLflow itself created and migrated, with nothing in it."""
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="taxiops-blank-mlflow-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def seed_mlflow_store(home: Path) -> None:
    """Put a copy of the blank store where taxiops's default store lives under `home`
    (`TAXIOPS_HOME/mlflow.db`), unless one is there."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / "mlflow.db"
    if not target.exists():
        shutil.copyfile(blank_mlflow_db(), target)
