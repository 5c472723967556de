"""How good a model is on a month: RMSE and MAE in minutes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from taxiops.ml.model import DurationModel
from taxiops.ml.schema import DURATION


@dataclass(frozen=True)
class Metrics:
    """Errors of predicted trip minutes over `rows` trips."""

    rmse: float
    mae: float
    rows: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(model: DurationModel, frame: pd.DataFrame) -> Metrics:
    """Score `model` on a prepared frame (it must hold the true `duration`)."""
    if DURATION not in frame.columns:
        raise ValueError(f"cannot evaluate: frame lacks the true {DURATION!r} column")
    if len(frame) == 0:
        raise ValueError("cannot evaluate on an empty frame")
    return metrics_of(frame[DURATION].to_numpy(dtype=np.float64), model.predict(frame))


def metrics_of(actual: np.ndarray, predicted: np.ndarray) -> Metrics:
    """RMSE and MAE of `predicted` against `actual` minutes (scikit-learn's metrics)."""
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    return Metrics(
        rmse=float(root_mean_squared_error(actual, predicted)),
        mae=float(mean_absolute_error(actual, predicted)),
        rows=int(actual.size),
    )
