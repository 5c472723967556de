"""Bad data met by the training flow, on a real server: the run ends "Rejected" naming the
file and the rule, the file goes to quarantine with a reason file, one alert event is
stored, and the next good month still trains."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from flows.train import train_duration_model
from prefect.client.schemas.objects import State
from prefect.events import Event

from taxiops import names
from taxiops.errors import DataValidationError, ValidationRule
from taxiops.intake.quarantine import quarantined_entries, read_reason
from taxiops.ml import synth_month, write_synth_month
from taxiops.payloads import DataRejected
from taxiops.settings import Settings
from taxiops.tripfile import Month, sha256_of

from .conftest import SYNTH_ROWS, events_since, log_messages_of, wait_for

BAD = "green_tripdata_2023-03.parquet"
ROWS = 2_000
PICKUP, DROPOFF = "lpep_pickup_datetime", "lpep_dropoff_datetime"


def _month_table(month: str = "2023-03") -> pa.Table:
    return pa.Table.from_pandas(
        synth_month("green", Month.parse(month), rows=ROWS, seed=11), preserve_index=False
    )


def _write(folder: Path, table: pa.Table) -> Path:
    pq.write_table(table, folder / BAD)
    return folder / BAD


def missing_column(folder: Path) -> Path:
    return _write(folder, _month_table().drop_columns(["trip_distance"]))


def renamed_column(folder: Path) -> Path:
    table = _month_table()
    names = ["pu_location_id" if n == "PULocationID" else n for n in table.column_names]
    return _write(folder, table.rename_columns(names))


def datetimes_as_text(folder: Path) -> Path:
    table = _month_table()
    text = pc.strftime(table[PICKUP], format="%Y-%m-%d %H:%M:%S")
    return _write(folder, table.set_column(table.schema.get_field_index(PICKUP), PICKUP, text))


def every_trip_two_hours(folder: Path) -> Path:
    table = _month_table()
    late = pc.add(table[PICKUP], pa.scalar(timedelta(hours=2), type=pa.duration("us")))
    return _write(folder, table.set_column(table.schema.get_field_index(DROPOFF), DROPOFF, late))


def february_named_march(folder: Path) -> Path:
    return _write(folder, _month_table("2023-02"))


def deleted_after_hand_off(folder: Path) -> Path:
    path = write_synth_month(folder, "green", Month(2023, 3), rows=ROWS, seed=11)
    path.unlink()
    return path


KINDS: dict[str, tuple[Callable[[Path], Path], ValidationRule, str]] = {
    "missing column": (missing_column, ValidationRule.MISSING_COLUMN, "trip_distance"),
    "renamed column": (renamed_column, ValidationRule.MISSING_COLUMN, "PULocationID"),
    "wrong column type": (
        datetimes_as_text,
        ValidationRule.WRONG_TYPE,
        "column lpep_pickup_datetime is string, expected timestamp",
    ),
    "all rows filtered out": (
        every_trip_two_hours,
        ValidationRule.NO_ROWS_LEFT,
        f"duration > 60 min: {ROWS:,}",
    ),
    "pickups outside the named month": (
        february_named_march,
        ValidationRule.OUTSIDE_MONTH,
        f"100% of {ROWS:,} pickups fall outside 2023-03 (they span 2023-02-01 .. 2023-02-28)",
    ),
    "file deleted after hand-off": (
        deleted_after_hand_off,
        ValidationRule.FILE_VANISHED,
        "no such file in",
    ),
}


def rejected_run(path: Path) -> tuple[State[Any], str]:
    state: State[Any] = train_duration_model(new_file=str(path), return_state=True)
    assert state.is_failed() and state.name == names.REJECTED_STATE, state
    return state, str(state.state_details.flow_run_id)


def the_one_rejection_event(since: datetime, flow_run_id: str, name: str = BAD) -> Event:
    """The run's single `taxiops.data.rejected` event; checks the run alerted no other way."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)  # what the flow emitted has reached the server

    def state_events() -> list[str] | None:
        run = f"prefect.flow-run.{flow_run_id}"
        seen = [e.event for e in events_since(since, run, "prefect.flow-run.")]
        return seen if f"prefect.flow-run.{names.REJECTED_STATE}" in seen else None

    def rejections() -> list[Event]:
        file_id = names.file_resource(name)["prefect.resource.id"]
        return events_since(since, file_id, names.DATA_REJECTED)

    run_states = wait_for(state_events, what="the run's Rejected state event")
    assert "prefect.flow-run.Failed" not in run_states  # the generic failure alert stays quiet
    stored = wait_for(rejections, what="the rejection event")
    assert len(stored) == 1, stored
    related = {r.role: r.id for r in stored[0].related}
    assert related["flow-run"] == f"prefect.flow-run.{flow_run_id}"
    return stored[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_bad_month_is_rejected_quarantined_and_announced_once(
    settings: Settings, months: dict[str, Path], kind: str
) -> None:
    make, rule, detail = KINDS[kind]
    bad = make(settings.incoming_dir)
    sha256 = sha256_of(bad) if bad.exists() else None
    since = datetime.now(UTC)

    state, run_id = rejected_run(bad)

    message = state.message or ""
    assert message.startswith(f"{BAD}: {rule.value}: ") and detail in message
    error = state.result(raise_on_failure=False)
    assert isinstance(error, DataValidationError) and error.rule is rule
    assert not bad.exists()
    quarantined = settings.quarantine_dir / BAD
    if rule.keeps_file:
        assert message.endswith(f"; moved to {quarantined}")
        reason = read_reason(quarantined)
        assert reason["rule"] == rule.value and detail in str(reason["detail"])
        assert reason["sha256"] == sha256 and reason["by"] == f"flow run {run_id}"
    else:
        assert quarantined_entries(settings.quarantine_dir) == []
    assert any(BAD in line and rule.value in line for line in log_messages_of(run_id))
    payload = the_one_rejection_event(since, run_id).payload
    assert payload == DataRejected.for_file(
        str(bad), rule.value, error.detail, rule.hint, str(quarantined) if rule.keeps_file else None
    ).model_dump(mode="json")

    write_synth_month(settings.incoming_dir, "green", Month(2023, 3), rows=ROWS, seed=3)
    summary = train_duration_model(new_file=str(bad))

    assert summary.month == "2023-03" and summary.train_months == ["2023-02"]


def test_a_bad_file_outside_the_incoming_folder_stays_where_it_is(
    settings: Settings, months: dict[str, Path]
) -> None:
    elsewhere = settings.incoming_dir.parent / "elsewhere"
    elsewhere.mkdir()
    bad = missing_column(elsewhere)
    since = datetime.now(UTC)

    # Through the incoming folder's parent: only the resolved folder counts.
    state, run_id = rejected_run(settings.incoming_dir / ".." / "elsewhere" / BAD)

    assert bad.is_file() and "moved to" not in (state.message or "")
    assert quarantined_entries(settings.quarantine_dir) == []
    assert the_one_rejection_event(since, run_id).payload["quarantined_to"] is None


def test_a_relative_path_into_the_incoming_folder_is_quarantined(
    settings: Settings, months: dict[str, Path]
) -> None:
    bad = missing_column(settings.incoming_dir)
    relative = Path("data", "incoming", BAD)  # the settings fixture works in tmp_path
    assert relative.resolve() == bad.resolve()

    rejected_run(relative)

    assert not bad.exists()
    assert [p.name for p in quarantined_entries(settings.quarantine_dir)] == [BAD]


def test_a_quarantine_that_cannot_be_written_still_rejects(
    settings: Settings, months: dict[str, Path]
) -> None:
    settings.quarantine_dir.write_text("a file where the folder should be")
    bad = missing_column(settings.incoming_dir)

    state, run_id = rejected_run(bad)

    assert bad.is_file() and "moved to" not in (state.message or "")
    assert any("could not quarantine" in line for line in log_messages_of(run_id))


def _good_month_after_a_bad_one(settings: Settings, months: dict[str, Path]) -> Path:
    """2023-02 replaced by a month missing a column, and a good 2023-03 beside it."""
    months["2023-02"].unlink()
    _write(settings.incoming_dir, _month_table().drop_columns(["trip_distance"])).rename(
        months["2023-02"]
    )
    return write_synth_month(settings.incoming_dir, "green", Month(2023, 3), rows=ROWS, seed=3)


def test_a_bad_earlier_month_in_the_folder_is_left_out_not_blamed_on_the_new_one(
    settings: Settings, months: dict[str, Path]
) -> None:
    good = _good_month_after_a_bad_one(settings, months)

    summary = train_duration_model(str(good))

    # The new month trains on its own first days; the bad month waits for its own run.
    assert summary.month == "2023-03" and summary.train_months == ["2023-03 (train)"]
    assert months["2023-02"].exists()


def test_a_bad_training_month_named_by_the_caller_rejects_the_run(
    settings: Settings, months: dict[str, Path]
) -> None:
    good = _good_month_after_a_bad_one(settings, months)

    state = train_duration_model(str(good), train_files=[str(months["2023-02"])], return_state=True)

    assert state.name == "Rejected"
    assert (state.message or "").startswith(f"{months['2023-02'].name}: missing-column")
    assert good.is_file() and not months["2023-02"].exists()
    assert read_reason(settings.quarantine_dir / months["2023-02"].name)["rule"] == "missing-column"


def test_a_file_removed_after_it_was_read_still_loads_from_the_bytes_read(
    settings: Settings, months: dict[str, Path]
) -> None:
    from taxiops.pipeline import tasks
    from taxiops.pipeline.lineage import MonthBytes

    content = MonthBytes.read(months["2023-02"], max_bytes=settings.max_file_bytes)
    months["2023-02"].unlink()

    month = tasks.load_month.fn(content, 10**6, 1.0, 60.0, 0.05)

    assert month.file.sha256 == content.file.sha256
    assert month.trips.report.rows_read == SYNTH_ROWS
