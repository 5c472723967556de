"""The training flow against a real Prefect server: promotion, caching, retries, artifacts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flows.train import train_duration_model
from prefect import flow, get_client
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from taxiops import names
from taxiops.errors import DataValidationError, TaskFailedError, ValidationRule
from taxiops.ml import write_synth_month
from taxiops.pipeline.report import TrainingSummary
from taxiops.pipeline.tasks import taxiops_task
from taxiops.registry import ModelRegistry
from taxiops.settings import Settings
from taxiops.tripfile import Month, sha256_of

from .conftest import artifact_keys_of, events_since, task_runs_of, wait_for

JSON_KEYS = {
    "rmse", "mae", "train_rows", "val_rows", "model_version", "promoted",
    "champion_rmse", "seconds", "flow_run_id", "cached_tasks",
}  # fmt: skip
DRIFT_FEATURES = {"trip_distance", "duration", "pickup hour", "PULocationID", "DOLocationID"}


def run(new_file: Path, train_files: list[Path] | None = None) -> TrainingSummary:
    return train_duration_model(
        new_file=str(new_file),
        train_files=None if train_files is None else [str(p) for p in train_files],
    )


def test_first_month_is_trained_registered_and_promoted(
    settings: Settings, months: dict[str, Path]
) -> None:
    summary = run(months["2023-02"])

    assert summary.promoted and summary.champion_rmse is None
    assert summary.model_version == "v1" and summary.train_months == ["2023-01"]
    assert 0 < summary.mae <= summary.rmse < 20 and math.isfinite(summary.rmse)
    assert summary.train_rows > 0.9 * 6_000 * 0.9 and summary.val_rows > 0
    registry = ModelRegistry.from_settings(settings)
    production = registry.production("green")
    assert production is not None and production.name == "v1"
    assert production.card.data_sha256.keys() == {p.name for p in months.values()}
    assert {names.REPORT_ARTIFACT, f"{names.REGISTRY_ARTIFACT}-green"} <= artifact_keys_of(
        summary.flow_run_id or ""
    )


def test_rerun_on_same_files_is_served_from_cache(
    settings: Settings, months: dict[str, Path]
) -> None:
    cold = run(months["2023-02"])
    warm = run(months["2023-02"])

    assert cold.cached_tasks == 0 and warm.total_tasks == cold.total_tasks
    states = {t.name.rsplit("-", 1)[0]: t.state_name for t in task_runs_of(warm.flow_run_id or "")}
    # The registry's present state is read and written anew; everything else comes from cache.
    live = {"open-registry", "read-champion", "register-challenger", "promote-if-better"}
    live |= {"record-outcome", "evaluate-champion"}  # the champion now is cold's own version
    live |= {"plot-rmse-history"}  # draws the registry of now
    assert {name for name, state in states.items() if state != "Cached"} == live, states
    runs = task_runs_of(warm.flow_run_id or "")
    assert warm.cached_tasks == sum(t.state_name == "Cached" for t in runs)
    assert (warm.model_version, warm.rmse) == (cold.model_version, cold.rmse)
    assert cold.promoted and not warm.promoted  # it already is production
    assert len(ModelRegistry.from_settings(settings).versions("green")) == 1


def test_replaced_file_with_same_name_misses_the_cache(
    settings: Settings, months: dict[str, Path]
) -> None:
    first = run(months["2023-02"])
    write_synth_month(settings.incoming_dir, "green", Month(2023, 2), rows=6_000, seed=99)

    second = run(months["2023-02"])

    states = {t.name: t.state_name for t in task_runs_of(second.flow_run_id or "")}
    loads = sorted(str(state) for name, state in states.items() if name.startswith("load-month"))
    assert loads == ["Cached", "Completed"], states  # January unchanged, February new bytes
    assert second.rmse != first.rmse
    assert second.months[-1].sha256 != first.months[-1].sha256


def test_worse_challenger_never_replaces_a_better_champion(
    settings: Settings, months: dict[str, Path]
) -> None:
    champion = run(months["2023-02"])
    tiny = write_synth_month(settings.home / "tiny", "green", Month(2022, 12), rows=150, seed=7)

    challenger = run(months["2023-02"], train_files=[tiny])

    assert not challenger.promoted and challenger.model_version == "v2"
    assert challenger.champion_version == champion.model_version
    assert challenger.champion_rmse == pytest.approx(champion.rmse)
    assert challenger.champion_rmse is not None and challenger.rmse > challenger.champion_rmse
    assert "worse" in challenger.promotion_reason
    production = ModelRegistry.from_settings(settings).production("green")
    assert production is not None and production.name == champion.model_version


def test_better_challenger_is_promoted(settings: Settings, months: dict[str, Path]) -> None:
    tiny = write_synth_month(settings.home / "tiny", "green", Month(2022, 12), rows=150, seed=7)
    weak = run(months["2023-02"], train_files=[tiny])

    strong = run(months["2023-02"])

    assert weak.promoted and strong.promoted
    assert strong.champion_version == weak.model_version and strong.rmse <= weak.rmse
    production = ModelRegistry.from_settings(settings).production("green")
    assert production is not None and production.name == strong.model_version


def test_without_earlier_month_the_new_month_is_split_by_pickup_time(
    settings: Settings, months: dict[str, Path]
) -> None:
    months["2023-01"].unlink()

    summary = run(months["2023-02"])

    assert summary.train_months == ["2023-02 (train)"]
    assert summary.promoted
    names = {t.name.rsplit("-", 1)[0] for t in task_runs_of(summary.flow_run_id or "")}
    assert "split-by-pickup-time" in names


def test_validation_error_fails_at_once_without_retries(
    settings: Settings, months: dict[str, Path]
) -> None:
    bad = settings.incoming_dir / "green_tripdata_2023-03.parquet"
    bad.write_text("VendorID,lpep_pickup_datetime\n1,2023-03-01\n")

    state: State[Any] = train_duration_model(new_file=str(bad), return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert (
        isinstance(error, DataValidationError) and error.rule is ValidationRule.UNREADABLE_PARQUET
    )
    assert bad.name in str(error)
    failed = [
        t for t in task_runs_of(state.state_details.flow_run_id or "") if t.state_name == "Failed"
    ]
    assert len(failed) == 1 and failed[0].run_count == 1


def test_bad_file_name_is_rejected_before_any_task(
    settings: Settings, months: dict[str, Path]
) -> None:
    bad = months["2023-02"].rename(settings.incoming_dir / "green_tripdata_2023-13.parquet")

    state: State[Any] = train_duration_model(new_file=str(bad), return_state=True)

    error = state.result(raise_on_failure=False)
    assert isinstance(error, DataValidationError) and error.rule is ValidationRule.FILE_NAME
    assert "2023-13" in str(error)


def test_changed_bytes_since_arrival_are_refused(
    settings: Settings, months: dict[str, Path]
) -> None:
    state: State[Any] = train_duration_model(
        new_file=str(months["2023-02"]), expected_sha256="0" * 64, return_state=True
    )

    error = state.result(raise_on_failure=False)
    assert isinstance(error, DataValidationError) and error.rule is ValidationRule.FILE_CHANGED


def test_transient_faults_are_retried_and_permanent_ones_are_not(
    settings: Settings, prefect_server: Any
) -> None:
    """Our retry policy on Prefect's real task engine: an I/O hiccup is retried, bad data is not."""
    calls = {"flaky": 0, "bad": 0}

    @taxiops_task("flaky-read")
    def flaky_read() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionResetError("storage went away")
        return "ok"

    @taxiops_task("bad-data")
    def bad_data() -> None:
        calls["bad"] += 1
        raise DataValidationError("x.parquet", ValidationRule.MISSING_COLUMN, "no trip_distance")

    @flow
    def exercise() -> str:
        result = flaky_read.with_options(
            retry_delay_seconds=0, cache_policy=NO_CACHE, persist_result=False
        )()
        bad_data.with_options(retry_delay_seconds=0, cache_policy=NO_CACHE, persist_result=False)()
        return result

    state: State[Any] = exercise(return_state=True)

    assert state.is_failed()
    assert calls == {"flaky": 3, "bad": 1}


def test_cli_json_contract(settings: Settings, months: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taxiops", "train", str(months["2023-02"]), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=240,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload.keys() >= JSON_KEYS
    assert payload["promoted"] is True and payload["champion_rmse"] is None
    assert payload["cached_tasks"] == 0 and payload["seconds"] > 0
    # Named like the watcher's runs: the month file and its bytes, not a random name.
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(payload["flow_run_id"])
    assert run.name == names.flow_run_name(months["2023-02"].name, sha256_of(months["2023-02"]))


def test_cli_reports_a_rejected_file_as_json(settings: Settings, months: dict[str, Path]) -> None:
    empty = settings.incoming_dir / "green_tripdata_2023-04.parquet"
    empty.touch()

    result = subprocess.run(
        [sys.executable, "-m", "taxiops", "train", str(empty), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 1
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert "unreadable-parquet" in payload["error"] and empty.name in payload["error"]


def test_a_broken_registry_fails_the_run_naming_the_task(
    settings: Settings, months: dict[str, Path]
) -> None:
    artifacts = settings.mlflow_artifacts_dir
    assert artifacts is not None
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text("not a folder")  # where the model files go

    state: State[Any] = train_duration_model(new_file=str(months["2023-02"]), return_state=True)

    assert state.is_failed() and state.name == "Failed"
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TaskFailedError) and error.task == "register-challenger"
    assert "Not a directory" in str(error) or "File exists" in str(error), str(error)
    assert ModelRegistry.from_settings(settings).production("green") is None
    failed = [
        t for t in task_runs_of(state.state_details.flow_run_id or "") if t.state_name == "Failed"
    ]
    assert [t.run_count for t in failed] == [1]  # a registry error is not transient


def test_a_late_older_month_never_replaces_a_model_built_for_a_newer_one(
    settings: Settings, months: dict[str, Path]
) -> None:
    newer = run(months["2023-02"])
    months["2023-02"].unlink()

    backfill = run(months["2023-01"])  # split by pickup time: judged on January

    assert newer.promoted and not backfill.promoted
    assert "backfill" in backfill.promotion_reason
    production = ModelRegistry.from_settings(settings).production("green")
    assert production is not None and production.name == newer.model_version


def test_the_report_shows_predicted_against_actual_minutes(
    settings: Settings, months: dict[str, Path]
) -> None:
    import base64
    import xml.etree.ElementTree as ET

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary = run(months["2023-02"])

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[names.REPORT_ARTIFACT]))
        )
    [report] = [a for a in artifacts if str(a.flow_run_id) == summary.flow_run_id]
    markdown = str(report.data)
    prefix = "![predicted vs actual](data:image/svg+xml;base64,"
    assert "## Predicted vs actual minutes" in markdown and prefix in markdown
    encoded = markdown.split(prefix, 1)[1].split(")", 1)[0]
    svg = ET.fromstring(base64.b64decode(encoded))
    cells = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.find("*") is not None]
    trips = sum(int(e[0].text.split()[0]) for e in cells if e[0].text)
    assert trips == summary.val_rows  # every validation trip is in the chart


def test_a_shifted_month_is_reported_as_drift_and_announced(
    settings: Settings, months: dict[str, Path]
) -> None:
    import pandas as pd

    since = datetime.now(UTC)
    steady = run(months["2023-02"])
    assert steady.drifted == [] and set(steady.drift_psi) == DRIFT_FEATURES
    assert steady.rows_read >= steady.rows_kept > 0 and set(steady.null_shares)

    march = settings.incoming_dir / "green_tripdata_2023-03.parquet"
    staged = write_synth_month(settings.home, "green", Month(2023, 3), rows=6_000, seed=9)
    frame = pd.read_parquet(staged)
    frame["trip_distance"] *= 1.8  # the same trips, much longer
    frame.to_parquet(march, index=False)
    shifted = run(march, train_files=[months["2023-02"]])

    assert "trip_distance" in shifted.drifted
    assert shifted.drift_psi["trip_distance"] >= shifted.drift_threshold
    assert shifted.champion_own_rmse == pytest.approx(steady.rmse)
    resource = names.month_resource_id("green", "2023-03")
    [event] = wait_for(
        lambda: events_since(since, resource, names.DATA_DRIFT), what="the drift event"
    )
    assert event.payload["drifted"] == shifted.drifted
    assert event.payload["flow_run_id"] == shifted.flow_run_id
