"""Where the flows live: `flows/` as `prefect.yaml` names them, found by `taxiops.bundled`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.flows import load_flow_from_entrypoint

from taxiops.bundled import bundled_root

TRAIN_ENTRYPOINT = "flows/train.py:train_duration_model"
RETRAIN_ENTRYPOINT = "flows/retrain.py:monthly_retrain"


def absolute_entrypoint(entrypoint: str) -> str:
    """A `prefect.yaml` entrypoint (`flows/x.py:name`) as an absolute `path:name`, which
    loads from any working directory."""
    path, _, name = entrypoint.partition(":")
    return f"{bundled_root() / Path(path)}:{name}"


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """Load a flow from its `prefect.yaml` entrypoint, wherever taxiops is installed."""
    return load_flow_from_entrypoint(absolute_entrypoint(entrypoint), use_placeholder_flow=False)
