"""Blank MLflow and Prefect stores, made once per test process and copied into each new
home or server folder.

MLflow builds a new SQLite store on first open by running its ~130 migration scripts (about
1.5 s here), and a Prefect server migrates a new database before it answers (about 7 s of
its 10 s start); a copy of a store made that way is the same file, in milliseconds. The
MLflow copy holds MLflow's schema and its `Default` experiment only: each home still makes
its own `taxi-duration` experiment and store identity (the cache key of the registry steps)
on first use; the Prefect copy holds the schema only. The demo test
(tests/e2e/test_up.py) uses neither, so new stores are still built the way a user's first
run builds them.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
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
    _copy_blank(blank_mlflow_db, home / "mlflow.db")


@cache
def blank_prefect_db() -> Path:
    """A Prefect database that `prefect server database upgrade` made, with nothing in it."""
    from taxiops.app.server import server_environment

    folder = Path(tempfile.mkdtemp(prefix="taxiops-blank-prefect-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=server_environment(folder, "127.0.0.1", 0),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect server database upgrade failed:\n{done.stderr[-2000:]}")
    return folder / "prefect.db"


def seed_prefect_store(state_dir: Path) -> None:
    """Put a copy of the blank Prefect database where a `LocalPrefectServer` on
    `state_dir` keeps its own (`state_dir/prefect.db`), unless one is there."""
    _copy_blank(blank_prefect_db, state_dir / "prefect.db")


def seed_home(home: Path) -> None:
    """Both stores of a `TAXIOPS_HOME` whose `taxiops up` runs its own server
    (`Settings.server_dir` is `home/server`)."""
    seed_mlflow_store(home)
    seed_prefect_store(home / "server")


def _copy_blank(blank: Callable[[], Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(blank(), target)
