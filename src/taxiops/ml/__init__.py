"""Pure ML for trip durations: pandas, pyarrow, XGBoost. No Prefect here.

load_trips -> split_by_pickup_time -> train_model -> evaluate -> DurationModel.save;
compare_months tells the drift of a new month against the training months.

Names load on first use (PEP 562): pandas and XGBoost take about half a second to
import, and a flow run should report Running before it pays for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taxiops.ml.data import PreparedTrips, PrepareReport, load_trips, split_by_pickup_time
    from taxiops.ml.drift import DriftReport, compare_months
    from taxiops.ml.metrics import Metrics, evaluate
    from taxiops.ml.model import DurationModel, TrainingParams, train_model
    from taxiops.ml.plots import predicted_vs_actual_svg, rmse_by_month_svg
    from taxiops.ml.synth import resample_month, synth_month, write_repeated, write_synth_month

_HOME = {
    "PreparedTrips": "data",
    "PrepareReport": "data",
    "load_trips": "data",
    "split_by_pickup_time": "data",
    "DriftReport": "drift",
    "compare_months": "drift",
    "Metrics": "metrics",
    "evaluate": "metrics",
    "DurationModel": "model",
    "TrainingParams": "model",
    "train_model": "model",
    "predicted_vs_actual_svg": "plots",
    "rmse_by_month_svg": "plots",
    "resample_month": "synth",
    "synth_month": "synth",
    "write_repeated": "synth",
    "write_synth_month": "synth",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"taxiops.ml.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DriftReport",
    "DurationModel",
    "Metrics",
    "PrepareReport",
    "PreparedTrips",
    "TrainingParams",
    "compare_months",
    "evaluate",
    "load_trips",
    "predicted_vs_actual_svg",
    "resample_month",
    "rmse_by_month_svg",
    "split_by_pickup_time",
    "synth_month",
    "train_model",
    "write_repeated",
    "write_synth_month",
]
