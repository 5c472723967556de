"""One source of truth for the names other parts agree on: events, resources,
deployments, work pool, blocks and artifacts."""

from __future__ import annotations

# --- Prefect events -------------------------------------------------------------
DATA_ARRIVED = "taxiops.data.arrived"
DATA_REJECTED = "taxiops.data.rejected"
DATA_DRIFT = "taxiops.data.drift"
MODEL_TRAINED = "taxiops.model.trained"
MONTH_MISSING = "taxiops.month.missing"
ALERT_UNDELIVERABLE = "taxiops.alert.undeliverable"


def alert_resource(alert_id: str, kind: str) -> dict[str, str]:
    """The primary resource of an alert event, e.g. `taxiops.alert.<id>`."""
    return {"prefect.resource.id": f"taxiops.alert.{alert_id}", "prefect.resource.name": kind}


def month_resource_id(taxi_type: str, month: str) -> str:
    """Resource id of a taxi type's month, e.g. `taxiops.month.green.2023-03`."""
    return f"taxiops.month.{taxi_type}.{month}"


TAXI_TYPE_LABEL = "taxiops.taxi-type"


def month_resource(taxi_type: str, month: str, name: str) -> dict[str, str]:
    """The primary resource of every month event; automations group by its taxi-type label."""
    return {
        "prefect.resource.id": month_resource_id(taxi_type, month),
        "prefect.resource.name": name,
        TAXI_TYPE_LABEL: taxi_type,
    }


def file_resource(name: str) -> dict[str, str]:
    """The primary resource of a rejected-file event, e.g. `taxiops.file.x.parquet`."""
    return {"prefect.resource.id": f"taxiops.file.{name}", "prefect.resource.name": name}


def taxi_type_resource_id(taxi_type: str) -> str:
    """Resource id of a taxi type's data stream, e.g. `taxiops.taxi.green`."""
    return f"taxiops.taxi.{taxi_type}"


# --- custom flow-run state names (Failed type; Prefect emits prefect.flow-run.<name>) ----
REJECTED_STATE = "Rejected"
MISSING_MONTH_STATE = "MissingMonth"

# --- flows and deployments ---------------------------------------------------------
TRAIN_FLOW = "train-duration-model"
RETRAIN_FLOW = "monthly-retrain"
TRAIN_DEPLOYMENT = "on-new-file"
RETRAIN_DEPLOYMENT = "monthly"
TRAIN_DEPLOYMENT_FULL = f"{TRAIN_FLOW}/{TRAIN_DEPLOYMENT}"
RETRAIN_DEPLOYMENT_FULL = f"{RETRAIN_FLOW}/{RETRAIN_DEPLOYMENT}"
WORK_POOL = "taxiops-process"

# --- notification block -------------------------------------------------------------------
NOTIFIER_BLOCK_TYPE = "taxiops-notifier"
NOTIFIER_BLOCK_NAME = "taxiops"

# --- the promotion lock: a Prefect global concurrency limit per taxi type -----------
PROMOTION_LOCK_PREFIX = "taxiops-promote-"

# --- artifacts ----------------------------------------------------------------------
REPORT_ARTIFACT = "training-report"
REGISTRY_ARTIFACT = "model-registry"
RMSE_CHART_ARTIFACT = "rmse_by_month.svg"  # in each MLflow run, beside predicted_vs_actual.svg


def flow_run_name(file_name: str, sha256: str, runs: int = 1) -> str:
    """A training run's name: the month file's stem and its bytes, e.g.
    `green_tripdata_2023-03-1a2b3c4d` (`-run2` for a file's second run)."""
    stem = file_name.removesuffix(".parquet")
    return f"{stem}-{sha256[:8]}" + (f"-run{runs}" if runs > 1 else "")


def flow_run_url(ui_url: str | None, flow_run_id: str | None) -> str | None:
    """A flow run's page in the Prefect UI, when both are known."""
    if ui_url and flow_run_id:
        return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"
    return None
