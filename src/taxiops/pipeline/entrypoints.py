"""Where the flows live: `flows/` at the project root, as `prefect.yaml` names them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.flows import load_flow_from_entrypoint

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TRAIN_ENTRYPOINT = "flows/train.py:train_duration_model"
RETRAIN_ENTRYPOINT = "flows/retrain.py:monthly_retrain"


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """Load a flow from its `prefect.yaml` entrypoint, relative to the project root."""
    path, _, name = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{PROJECT_ROOT / path}:{name}", use_placeholder_flow=False)
