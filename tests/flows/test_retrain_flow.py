"""The monthly retrain flow on a real server: retrains what is there, names what is missing."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from flows.retrain import RetrainFailedError, monthly_retrain
from prefect.client.schemas.objects import State

from taxiops import names
from taxiops.errors import MissingMonthError
from taxiops.intake.quarantine import read_reason
from taxiops.ml import write_synth_month
from taxiops.registry import ModelRegistry
from taxiops.settings import Settings
from taxiops.tripfile import Month


def test_retrains_each_taxi_type_on_its_newest_month(
    settings: Settings, prefect_server: Any
) -> None:
    for i, month in enumerate(["2023-01", "2023-02"]):
        write_synth_month(settings.incoming_dir, "green", Month.parse(month), rows=3_000, seed=i)

    summaries = monthly_retrain(taxi_types=["green"], today=date(2023, 3, 2))

    assert [(s.taxi_type, s.month, s.train_months) for s in summaries] == [
        ("green", "2023-02", ["2023-01"])
    ]


def test_a_missing_month_fails_clearly_after_retraining_the_others(
    settings: Settings, prefect_server: Any
) -> None:
    for i, month in enumerate(["2023-01", "2023-02"]):
        write_synth_month(settings.incoming_dir, "green", Month.parse(month), rows=3_000, seed=i)
    write_synth_month(settings.incoming_dir, "yellow", Month(2023, 1), rows=3_000, seed=5)

    state: State[Any] = monthly_retrain(
        taxi_types=["green", "yellow"], today=date(2023, 4, 2), return_state=True
    )  # default publication lag 2: April expects February

    assert state.name == names.MISSING_MONTH_STATE
    error = state.result(raise_on_failure=False)
    assert isinstance(error, MissingMonthError)
    assert "missing month" in str(error) and "yellow" in str(error) and "2023-02" in str(error)
    assert ModelRegistry.from_settings(settings).production("green") is not None
    assert not (settings.home / "models" / "yellow").exists()


def test_a_rejected_month_of_one_type_does_not_stop_the_others(
    settings: Settings, prefect_server: Any
) -> None:
    for i, month in enumerate(["2023-01", "2023-02"]):
        write_synth_month(settings.incoming_dir, "green", Month.parse(month), rows=3_000, seed=i)
    (settings.incoming_dir / "yellow_tripdata_2023-02.parquet").write_bytes(b"not parquet")

    state: State[Any] = monthly_retrain(
        taxi_types=["yellow", "green"], today=date(2023, 4, 2), return_state=True
    )

    # The yellow run alerted once (taxiops.data.rejected); a plain Failed parent would alert
    # again through the generic failure automation, so the parent ends "Rejected" too.
    assert state.is_failed() and state.name == names.REJECTED_STATE
    error = state.result(raise_on_failure=False)
    assert isinstance(error, RetrainFailedError) and "yellow" in str(error)
    assert "unreadable-parquet" in str(error)
    assert ModelRegistry.from_settings(settings).production("green") is not None
    assert read_reason(settings.quarantine_dir / "yellow_tripdata_2023-02.parquet")["rule"] == (
        "unreadable-parquet"
    )


def test_days_since_counts_from_the_newest_files_arrival(tmp_path: Path) -> None:
    from flows.retrain import _days_since_arrival

    from taxiops.pipeline.schedule import RetrainPlan
    from taxiops.tripfile import parse_trip_file

    path = tmp_path / "green_tripdata_2023-01.parquet"
    path.write_bytes(b"")
    zone = ZoneInfo("UTC")
    arrived = datetime(2023, 2, 20, 12, tzinfo=zone).timestamp()
    os.utime(path, (arrived, arrived))
    newest = parse_trip_file(path)

    plan = RetrainPlan(taxi_type="green", expected=Month(2023, 2), newest=newest)
    assert _days_since_arrival(plan, date(2023, 4, 2), zone) == 41
    none = RetrainPlan(taxi_type="green", expected=Month(2023, 2), newest=None)
    assert _days_since_arrival(none, date(2023, 4, 2), zone) is None
