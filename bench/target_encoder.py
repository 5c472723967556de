"""Our zone encoder against scikit-learn's `TargetEncoder`, on real green month pairs.

Issue 10 asked whether scikit-learn's cross-fitted `TargetEncoder` should replace our
out-of-fold zone statistics (`taxiops.ml.features.ZoneEncoder`). Both variants train the
same XGBoost booster on the same rows and validate on the next month:

- `ours`: the 12 features of `ZoneEncoder` (out-of-fold smoothed mean minutes per pickup
  zone, dropoff zone and zone pair; trip counts; the pair's minutes per mile);
- `sklearn`: the same matrix with the three mean-minutes columns computed by
  `TargetEncoder(target_type="continuous", cv=folds, smooth=smoothing)` instead.

It prints the encoding seconds (median and max of `--runs`) and the validation RMSE of each.

    .venv/bin/python bench/target_encoder.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from sklearn.metrics import root_mean_squared_error
from sklearn.model_selection import KFold
from sklearn.preprocessing import TargetEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import real_month
from taxiops.ml import TrainingParams, load_trips
from taxiops.ml.features import DURATION, FEATURE_NAMES, ZoneEncoder, _level_keys
from taxiops.tripfile import parse_trip_file

PAIRS = [("2021-01", "2021-02"), ("2023-01", "2023-02")]
MEAN_COLUMNS = [FEATURE_NAMES.index(f"{level}_mean_minutes") for level in ("pu", "do", "pair")]


def prepared(month: str) -> pd.DataFrame:
    path = real_month(f"green_tripdata_{month}.parquet")
    return load_trips(parse_trip_file(path)).frame


def categories(frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    keys = _level_keys(frame)
    return np.column_stack([keys["pu"], keys["do"], keys["pair"]])


Encoded = tuple[np.ndarray, np.ndarray, float]  # train and validation matrices, seconds


def encode_ours(train: pd.DataFrame, valid: pd.DataFrame, params: TrainingParams) -> Encoded:
    """All 12 features; the seconds of the whole encoder, fit and transform."""
    started = time.perf_counter()
    encoder, matrix = ZoneEncoder.fit_transform(
        train, smoothing=params.smoothing, folds=params.folds, seed=params.seed
    )
    return matrix, encoder.transform(valid), time.perf_counter() - started


def encode_sklearn(train: pd.DataFrame, valid: pd.DataFrame, params: TrainingParams) -> Encoded:
    """Ours with the three mean-minutes columns from `TargetEncoder`; the seconds of
    `TargetEncoder` alone (it yields those three columns only)."""
    train_matrix, valid_matrix, _ = encode_ours(train, valid, params)
    started = time.perf_counter()
    folds = KFold(n_splits=params.folds, shuffle=True, random_state=params.seed)
    encoder = TargetEncoder(target_type="continuous", cv=folds, smooth=params.smoothing)
    train_matrix[:, MEAN_COLUMNS] = encoder.fit_transform(
        categories(train), train[DURATION].to_numpy(dtype=np.float64)
    )
    valid_matrix[:, MEAN_COLUMNS] = encoder.transform(categories(valid))
    return train_matrix, valid_matrix, time.perf_counter() - started


def rmse_of(
    train_matrix: np.ndarray, valid_matrix: np.ndarray, train: pd.DataFrame, valid: pd.DataFrame,
    params: TrainingParams,
) -> float:  # fmt: skip
    dtrain = xgb.QuantileDMatrix(
        train_matrix, label=train[DURATION].to_numpy(dtype=np.float32), max_bin=params.max_bin
    )
    booster = xgb.train(params.booster_params(), dtrain, num_boost_round=params.rounds)
    predicted = booster.inplace_predict(valid_matrix)
    return float(root_mean_squared_error(valid[DURATION].to_numpy(dtype=np.float64), predicted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    params = TrainingParams()
    print(f"{'pair':18s}{'encoder':>9s}{'encode s (median)':>19s}{'max':>7s}{'RMSE':>8s}")
    for train_month, valid_month in PAIRS:
        train, valid = prepared(train_month), prepared(valid_month)
        for name, encode in (("ours", encode_ours), ("sklearn", encode_sklearn)):
            seconds = []
            for _ in range(runs):
                train_matrix, valid_matrix, took = encode(train, valid, params)
                seconds.append(took)
            rmse = rmse_of(train_matrix, valid_matrix, train, valid, params)
            print(
                f"{train_month + ' -> ' + valid_month:18s}{name:>9s}"
                f"{statistics.median(seconds):>19.3f}{max(seconds):>7.3f}{rmse:>8.3f}"
            )


if __name__ == "__main__":
    main()
