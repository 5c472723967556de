"""Pure ML for trip durations: pandas, pyarrow, numpy and XGBoost. Never imports Prefect.

    load_trips -> split_by_pickup_time -> train_model -> evaluate -> DurationModel.save

One module each: `schema` (column names and types), `data` (read, check,
prepare), `features` (zone statistics), `model` (train, save, load),
`evaluate` (RMSE, MAE), `plots` (SVG), `synth` (synthetic and resampled months).
"""

from __future__ import annotations

from taxiops.ml.data import PreparedTrips, PrepareReport, load_trips, split_by_pickup_time
from taxiops.ml.evaluate import Metrics, evaluate
from taxiops.ml.model import DurationModel, TrainingParams, train_model
from taxiops.ml.plots import predicted_vs_actual_svg, svg_data_uri
from taxiops.ml.schema import PREPARED_COLUMNS, TripColumns, tlc_file_schema, trip_columns
from taxiops.ml.synth import resample_month, synth_month, write_synth_month

__all__ = [
    "PREPARED_COLUMNS",
    "DurationModel",
    "Metrics",
    "PrepareReport",
    "PreparedTrips",
    "TrainingParams",
    "TripColumns",
    "evaluate",
    "load_trips",
    "predicted_vs_actual_svg",
    "resample_month",
    "split_by_pickup_time",
    "svg_data_uri",
    "synth_month",
    "tlc_file_schema",
    "train_model",
    "trip_columns",
    "write_synth_month",
]
