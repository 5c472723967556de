"""The MLflow pyfunc of a registered taxiops model, logged as code ("models from code").

MLflow copies this file into every registered model and runs it when the model loads,
where taxiops need not be installed: it imports only numpy, pandas, xgboost and mlflow,
and the feature code from the model's own copy of `taxiops/ml/features.py`. taxiops
itself never imports this module; it passes its path to `mlflow.pyfunc.log_model`.

    model = mlflow.pyfunc.load_model("models:/taxi-duration-green@champion")
    minutes = model.predict(pd.read_parquet("green_tripdata_2023-03.parquet"))
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext

#: Name of the artifact holding the saved model folder (see `DurationModel.save`).
MODEL_ARTIFACT = "model"
#: The model folder's copy of `taxiops/ml/features.py`.
FEATURES_FILE = "features.py"


class TaxiDurationModel(PythonModel):
    """Predicted trip minutes for TLC trips: a raw month as `pd.read_parquet` returns it, or
    a frame with the prepared column names."""

    def load_context(self, context: PythonModelContext) -> None:
        folder = Path(context.artifacts[MODEL_ARTIFACT])
        self._features = _import_file(folder / FEATURES_FILE)
        self._encoder = self._features.ZoneEncoder.from_json(
            json.loads((folder / "encoder.json").read_text())
        )
        self._booster = xgb.Booster()
        self._booster.load_model(bytearray((folder / "booster.ubj").read_bytes()))
        self._booster.set_param({"nthread": 1})
        self._pickup_column = str(context.model_config["pickup_column"])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> npt.NDArray[np.float32]:
        frame = model_input
        pickup = self._features.PICKUP
        if pickup not in frame.columns:
            if self._pickup_column not in frame.columns:
                raise ValueError(f"trips need a {self._pickup_column!r} or {pickup!r} column")
            frame = frame.rename(columns={self._pickup_column: pickup})
        if len(frame) == 0:
            return np.empty(0, dtype=np.float32)
        matrix = self._encoder.transform(frame)
        return np.asarray(self._booster.inplace_predict(matrix), dtype=np.float32)


def _import_file(path: Path) -> ModuleType:
    """The module in `path`, under a private name (nothing of the caller's is shadowed)."""
    name = f"_taxi_duration_{path.stem}_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


set_model(TaxiDurationModel())
