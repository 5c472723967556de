"""Helpers for the notify tests: raw HTTP posts and one sample notice of each kind."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from taxiops.notify import (
    DataRejected,
    ModelTrained,
    MonthMissing,
    Notice,
    NoticeKind,
    RunFailure,
    SlackInbox,
)

FLOW_RUN_ID = "3f1c2a7e-9b2d-4c1e-8f00-123456789abc"
UI_URL = "http://127.0.0.1:4200"


@dataclass
class Answer:
    status: int
    body: str
    headers: dict[str, str]


def post(url: str, body: bytes, content_type: str = "application/json") -> Answer:
    """POST raw bytes and return the answer, HTTP errors included."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return Answer(response.status, response.read().decode(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read().decode(), dict(exc.headers))


def post_json(url: str, payload: object) -> Answer:
    return post(url, json.dumps(payload).encode())


def inbox_output(inbox: SlackInbox) -> str:
    """What the inbox printed so far (the `inbox` fixture prints into a buffer)."""
    stream = inbox._stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def trained_notice(drifted: bool = False, **overrides: object) -> Notice:
    psi = {"trip_distance": 0.004, "duration": 0.003, "pickup hour": 0.002}
    if drifted:
        psi.update(trip_distance=0.27, duration=0.17)
    facts = ModelTrained(
        taxi_type="green",
        month="2023-03",
        file="green_tripdata_2023-03.parquet",
        rows_read=55_000,
        rows_kept=54_321,
        null_shares={"lpep_pickup_datetime": 0.0, "trip_distance": 0.0125},
        drift_psi=psi,
        drifted=["trip_distance", "duration"] if drifted else [],
        drift_threshold=0.1,
        champion_own_rmse=5.3,
        train_rows=43_000,
        val_rows=11_321,
        model_version="v12",
        promoted=True,
        promotion_reason="challenger RMSE 5.420 < champion 5.610",
        rmse=5.42,
        mae=3.9,
        champion_version="v11",
        champion_rmse=5.61,
        champion_mae=4.0,
        seconds=83.2,
    )
    data: dict[str, object] = {
        "kind": NoticeKind.SUCCEEDED,
        "facts": facts,
        "flow_run_id": FLOW_RUN_ID,
        "flow_run_name": "nice-otter",
        "flow_name": "train-duration-model",
        "deployment_name": "on-new-file",
        "ui_url": UI_URL,
        "occurred": "2024-03-02T06:00:05+00:00",
    }
    data.update(overrides)
    return Notice.model_validate(data)


def failure_notice(kind: NoticeKind = NoticeKind.FAILED, **overrides: object) -> Notice:
    state = {"failed": "Failed", "crashed": "Crashed", "timed_out": "TimedOut"}[kind.value]
    data: dict[str, object] = {
        "kind": kind,
        "facts": RunFailure(
            state=state,
            message=(
                "DataValidationError: green_tripdata_2023-03.parquet: missing-column: "
                "trip_distance <check> & retry"
            ),
            failed_task="load-month",
            parameters={"new_file": "data/incoming/green_tripdata_2023-03.parquet"},
        ),
        "flow_run_id": FLOW_RUN_ID,
        "flow_run_name": "nice-otter",
        "flow_name": "train-duration-model",
        "deployment_name": "on-new-file",
        "ui_url": UI_URL,
    }
    data.update(overrides)
    return Notice.model_validate(data)


def rejected_notice(**overrides: object) -> Notice:
    data: dict[str, object] = {
        "kind": NoticeKind.REJECTED,
        "facts": DataRejected(
            path="data/incoming/green_tripdata_2023-13.parquet",
            rule="file-name",
            detail="month 13 does not exist",
            quarantined_to="data/quarantine/green_tripdata_2023-13.parquet",
            hint="name it <green|yellow>_tripdata_YYYY-MM.parquet",
        ),
        "flow_run_id": FLOW_RUN_ID,
        "ui_url": UI_URL,
    }
    data.update(overrides)
    return Notice.model_validate(data)


def missing_notice(**overrides: object) -> Notice:
    data: dict[str, object] = {
        "kind": NoticeKind.MISSING_MONTH,
        "facts": MonthMissing(
            taxi_type="yellow",
            expected_month="2024-02",
            newest_month="2024-01",
            days_since=41,
            folder="data/incoming",
        ),
        "flow_run_id": FLOW_RUN_ID,
        "flow_run_name": "brisk-heron",
        "ui_url": UI_URL,
    }
    data.update(overrides)
    return Notice.model_validate(data)


ALL_NOTICES: dict[str, Callable[[], Notice]] = {
    "succeeded": trained_notice,
    "drifted": lambda: trained_notice(drifted=True),
    "failed": lambda: failure_notice(NoticeKind.FAILED),
    "crashed": lambda: failure_notice(NoticeKind.CRASHED),
    "timed_out": lambda: failure_notice(NoticeKind.TIMED_OUT),
    "rejected": rejected_notice,
    "missing_month": missing_notice,
}
