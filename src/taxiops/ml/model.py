"""Train, save and load the trip-duration model: zone statistics + XGBoost (hist).

Saved models are portable files, never pickles:

    model.json     format version, parameters, feature names, library versions
    encoder.json   the zone statistics (`features.ZoneEncoder`)
    booster.ubj    the XGBoost booster in its own binary JSON format
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb

from taxiops.fileio import write_atomically
from taxiops.ml.features import FEATURE_NAMES, ZoneEncoder
from taxiops.ml.schema import DURATION, FEATURE_INPUT_COLUMNS

MODEL_FORMAT = "taxiops-duration-model/1"
MANY_ROWS = 500_000  # training rows from which a fit uses every core
MODEL_FILE = "model.json"
ENCODER_FILE = "encoder.json"
BOOSTER_FILE = "booster.ubj"

OBJECTIVE = "reg:squarederror"
TREE_METHOD = "hist"


@dataclass(frozen=True)
class TrainingParams:
    """How to train. The defaults are the tuned fast model (about 0.5 s for a month of green trips).

    `n_threads` N uses N threads; the default, 0, picks by size: one thread below
    `MANY_ROWS` training rows, all cores from there. Beside a busy
    Prefect server XGBoost's OpenMP threads spin-wait for a core someone else holds:
    a 0.5 s fit of a green month on 2 cores was measured taking 3-8 s, while one
    thread stays under about 1 s. A yellow-size month trains for many seconds, while
    the server and runner sit idle, and there the cores pay.

    `smoothing` is the number of pseudo-trips pulling a zone's mean toward the
    overall mean; `folds` the number of out-of-fold groups used to encode
    training rows.
    """

    rounds: int = 100
    max_depth: int = 7
    eta: float = 0.2
    min_child_weight: float = 50.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    reg_lambda: float = 1.0
    max_bin: int = 256
    smoothing: float = 20.0
    folds: int = 5
    seed: int = 42
    n_threads: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.max_depth < 1 or self.max_bin < 2:
            raise ValueError("rounds and max_depth must be >= 1 and max_bin >= 2")
        if not (0 < self.eta <= 1 and 0 < self.subsample <= 1 and 0 < self.colsample_bytree <= 1):
            raise ValueError("eta, subsample and colsample_bytree must be in (0, 1]")
        if self.folds < 2 or self.smoothing < 0 or self.n_threads < 0:
            raise ValueError("folds must be >= 2, smoothing and n_threads >= 0")

    def as_dict(self) -> dict[str, float | int | str]:
        """Every parameter, plus the fixed objective and tree method, for logs and registries."""
        return {**asdict(self), "objective": OBJECTIVE, "tree_method": TREE_METHOD}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingParams:
        """The inverse of `as_dict` (unknown keys are ignored)."""
        fields = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in fields})

    def threads_for(self, rows: int) -> int:
        """XGBoost's `nthread` for a fit on `rows` rows (0: all cores)."""
        if self.n_threads:
            return self.n_threads
        return 0 if rows >= MANY_ROWS else 1

    def booster_params(self, rows: int = 0) -> dict[str, Any]:
        """The XGBoost parameter dict for a fit on `rows` rows."""
        params: dict[str, Any] = {
            "objective": OBJECTIVE,
            "tree_method": TREE_METHOD,
            "max_depth": self.max_depth,
            "eta": self.eta,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "max_bin": self.max_bin,
            "seed": self.seed,
            "verbosity": 0,
        }
        if threads := self.threads_for(rows):
            params["nthread"] = threads
        return params


class DurationModel:
    """A trained model: predicts trip minutes from `PULocationID`, `DOLocationID`,
    `trip_distance` and `pickup_datetime`."""

    def __init__(
        self,
        booster: xgb.Booster,
        encoder: ZoneEncoder,
        params: TrainingParams,
        *,
        trained_rows: int,
    ) -> None:
        self.booster = booster
        self.encoder = encoder
        self.params = params
        self.trained_rows = trained_rows

    def __repr__(self) -> str:
        return f"DurationModel(trained_rows={self.trained_rows}, params={self.params!r})"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def features(self, frame: pd.DataFrame) -> npt.NDArray[np.float32]:
        """The feature matrix the booster sees for `frame`."""
        missing = [name for name in FEATURE_INPUT_COLUMNS if name not in frame.columns]
        if missing:
            raise ValueError(f"cannot predict: frame lacks column(s) {', '.join(missing)}")
        return self.encoder.transform(frame)

    def predict(self, frame: pd.DataFrame) -> npt.NDArray[np.float32]:
        """Predicted minutes, one per row of `frame` (a prepared frame; `duration` is ignored)."""
        if len(frame) == 0:
            return np.empty(0, dtype=np.float32)
        prediction = self.booster.inplace_predict(self.features(frame))
        return np.asarray(prediction, dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Write the model's three files into `directory` (created if needed), each atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": MODEL_FORMAT,
            "params": self.params.as_dict(),
            "feature_names": list(FEATURE_NAMES),
            "trained_rows": self.trained_rows,
            "xgboost_version": xgb.__version__,
        }
        write_atomically(directory / ENCODER_FILE, json.dumps(self.encoder.to_json()).encode())
        write_atomically(directory / BOOSTER_FILE, bytes(self.booster.save_raw(raw_format="ubj")))
        # Written last: its presence marks a complete model.
        write_atomically(directory / MODEL_FILE, json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, directory: Path) -> DurationModel:
        """Read a model written by `save`.

        Raises `FileNotFoundError` when a file is missing and `ValueError` when
        the files are not a model of this format.
        """
        meta_path = directory / MODEL_FILE
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != MODEL_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
            if meta.get("feature_names") != list(FEATURE_NAMES):
                raise ValueError("its feature names differ from this version of taxiops")
            params = TrainingParams.from_dict(meta["params"])
            encoder = ZoneEncoder.from_json(json.loads((directory / ENCODER_FILE).read_text()))
            booster = xgb.Booster()
            booster.load_model(bytearray((directory / BOOSTER_FILE).read_bytes()))
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError, xgb.core.XGBoostError) as error:
            raise ValueError(f"{directory} is not a readable taxiops model: {error}") from error
        trained_rows = int(meta["trained_rows"])
        if threads := params.threads_for(trained_rows):
            booster.set_param({"nthread": threads})
        return cls(booster, encoder, params, trained_rows=trained_rows)


def train_model(
    train: Sequence[pd.DataFrame], params: TrainingParams = TrainingParams()
) -> DurationModel:
    """Train on one or more prepared frames (see `data.PreparedTrips.frame`).

    No early stopping: the number of rounds is fixed, so no validation data
    leaks into the model.
    """
    frames = [frame for frame in train if len(frame)]
    if not frames:
        raise ValueError("no training rows: pass at least one non-empty prepared frame")
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    encoder, matrix = ZoneEncoder.fit_transform(
        frame, smoothing=params.smoothing, folds=params.folds, seed=params.seed
    )
    label = frame[DURATION].to_numpy(dtype=np.float32)
    del frame, frames
    rows = matrix.shape[0]
    dtrain = xgb.QuantileDMatrix(
        matrix,
        label=label,
        max_bin=params.max_bin,
        feature_names=list(FEATURE_NAMES),
        nthread=params.threads_for(rows) or -1,
    )
    del matrix
    booster = xgb.train(params.booster_params(rows), dtrain, num_boost_round=params.rounds)
    return DurationModel(booster, encoder, params, trained_rows=rows)
