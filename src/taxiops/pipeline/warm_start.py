"""Flow runs of `taxiops up` forked from a warm process instead of a fresh interpreter.

Prefect's runner starts a flow it holds in memory with `run_flow_in_subprocess`: a
`spawn` process, a new interpreter that imports Prefect (about 1.3 s here) before the run
reports Running, then pandas, XGBoost and MLflow (about 2 s more) as it trains. Warm, the
same processes come from a `multiprocessing` fork server that imported all of that once,
as `taxiops up` started: each run is a fork of it, and starts with its imports done.

The fork server is a fresh interpreter started from the runner's process (about 330 MiB
once it has imported all of it, shared with its forks until they write). It runs no Python
thread of its own when it forks, only the native threads numpy's and pyarrow's imports
start, as any process forked after importing them does. Prefect sets each child's
environment from the runner's, as it does for a spawned process.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import types
from typing import Any

# What a training run imports, in the order it needs it (found with `python -X importtime
# -m taxiops train`): the engine, the flows' own imports, pandas and pyarrow, XGBoost (which
# imports scikit-learn and SciPy), MLflow and its SQL stores (SQLAlchemy and Alembic, about
# 0.6 s on first use of a sqlite:// store).
WARM_MODULES = (
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.artifacts",
    "prefect.concurrency.sync",
    "taxiops.intake.quarantine",
    "taxiops.pipeline.report",
    "taxiops.pipeline.tasks",
    "pandas",
    "pyarrow.parquet",
    "taxiops.ml.data",
    "taxiops.ml.drift",
    "xgboost",
    "sklearn.metrics",
    "taxiops.ml.model",
    "taxiops.ml.plots",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.data.pandas_dataset",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "git",
    # Imported only once a run is under way (listed from `sys.modules` after one):
    # Prefect's parameter schema and flow visualisation, the SQLite dialect, anyio's loop.
    "pydantic.v1",
    "prefect.utilities.visualization",
    "sqlalchemy.dialects.sqlite",
    "anyio._backends._asyncio",
)


class _ForkServerForSpawn(types.ModuleType):
    """`multiprocessing` as `prefect.flow_engine` sees it, except that
    `get_context("spawn")` answers the fork server's context."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        super().__init__(multiprocessing.__name__)
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context if method == "spawn" else multiprocessing.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def start_runs_warm() -> bool:
    """From now on, fork this process's in-memory flow runs from a fork server that
    imported `WARM_MODULES` (`taxiops.pipeline._preload`), and start that server (its
    imports run in its own process).

    Returns False, changing nothing, when this Prefect has no `run_flow_in_subprocess`
    picking a `spawn` context to redirect: runs then start cold, as Prefect starts them."""
    from multiprocessing import forkserver

    import prefect.flow_engine

    engine: Any = prefect.flow_engine
    if not hasattr(engine, "run_flow_in_subprocess") or not hasattr(engine, "multiprocessing"):
        return False
    if not isinstance(engine.multiprocessing, _ForkServerForSpawn):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["taxiops.pipeline._preload"])
        engine.multiprocessing = _ForkServerForSpawn(context)
    forkserver.ensure_running()  # restarts the server if it died
    return True


def wait_until_warm() -> None:
    """Return once the fork server has done its imports: it forks a child that exits at once.

    `taxiops up` reports ready only after this, so that its first run does not wait for
    the imports (measured: the first drop reached Running in 3.2 s, the others in 0.7 s)."""
    child = multiprocessing.get_context("forkserver").Process(
        target=_exit_at_once, name="taxiops-warm-check"
    )
    child.start()  # answered once the server forks, that is after its preload
    child.join()


def _exit_at_once() -> None:
    """The child `wait_until_warm` forks."""
