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
    """RMSE and MAE of `predicted` against `actual` minutes."""
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return Metrics(
        rmse=float(np.sqrt(np.mean(error**2))),
        mae=float(np.mean(np.abs(error))),
        rows=int(error.size),
    )
