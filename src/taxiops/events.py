"""One source of truth for the names other parts agree on: events, resources,
deployments, work pool, blocks and artifacts."""

from __future__ import annotations

# --- Prefect events -------------------------------------------------------------
DATA_ARRIVED = "taxiops.data.arrived"
DATA_REJECTED = "taxiops.data.rejected"
MODEL_TRAINED = "taxiops.model.trained"
MONTH_MISSING = "taxiops.month.missing"


def month_resource_id(taxi_type: str, month: str) -> str:
    """Resource id of a taxi type's month, e.g. `taxiops.month.green.2023-03`."""
    return f"taxiops.month.{taxi_type}.{month}"


def taxi_type_resource_id(taxi_type: str) -> str:
    """Resource id of a taxi type's data stream, e.g. `taxiops.taxi.green`."""
    return f"taxiops.taxi.{taxi_type}"


# --- flows and deployments ---------------------------------------------------------
TRAIN_FLOW = "train-duration-model"
RETRAIN_FLOW = "monthly-retrain"
TRAIN_DEPLOYMENT = "on-new-file"
RETRAIN_DEPLOYMENT = "monthly"
TRAIN_DEPLOYMENT_FULL = f"{TRAIN_FLOW}/{TRAIN_DEPLOYMENT}"
RETRAIN_DEPLOYMENT_FULL = f"{RETRAIN_FLOW}/{RETRAIN_DEPLOYMENT}"
WORK_POOL = "taxiops-process"

# --- artifacts ----------------------------------------------------------------------
REPORT_ARTIFACT = "training-report"
REGISTRY_ARTIFACT = "model-registry"
