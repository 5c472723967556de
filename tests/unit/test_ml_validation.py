"""One test per validation rule of `load_trips`, each with a real bad file on disk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.ml import load_trips, synth_month
from taxiops.tripfile import Month, TripFile, parse_trip_file

MONTH = Month(2021, 1)
NAME = "green_tripdata_2021-01.parquet"


@pytest.fixture(scope="module")
def good_month() -> pd.DataFrame:
    return synth_month("green", MONTH, rows=2_000, seed=3)


def _write(folder: Path, frame: pd.DataFrame, name: str = NAME) -> TripFile:
    path = folder / name
    frame.to_parquet(path, index=False)
    return parse_trip_file(path)


def _rejects(trip_file: TripFile, rule: ValidationRule) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        load_trips(trip_file)
    error = caught.value
    assert error.rule is rule
    assert error.path == trip_file.path
    assert trip_file.path.name in str(error)
    return error


def test_zero_byte_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.touch()
    error = _rejects(parse_trip_file(path), ValidationRule.UNREADABLE_PARQUET)
    assert "empty" in error.detail


def test_truncated_parquet_is_unreadable(tmp_path: Path, good_month: pd.DataFrame) -> None:
    whole = tmp_path / "whole.parquet"
    good_month.to_parquet(whole, index=False)
    path = tmp_path / NAME
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = _rejects(parse_trip_file(path), ValidationRule.UNREADABLE_PARQUET)
    assert "truncated" in error.detail


def test_csv_renamed_to_parquet_is_unreadable(tmp_path: Path, good_month: pd.DataFrame) -> None:
    path = tmp_path / NAME
    good_month.head(50).to_csv(path, index=False)
    _rejects(parse_trip_file(path), ValidationRule.UNREADABLE_PARQUET)


def test_missing_column_is_named(tmp_path: Path, good_month: pd.DataFrame) -> None:
    trip_file = _write(
        tmp_path, good_month.drop(columns=["lpep_dropoff_datetime", "trip_distance"])
    )
    error = _rejects(trip_file, ValidationRule.MISSING_COLUMN)
    assert "lpep_dropoff_datetime, trip_distance" in error.detail
    assert "lpep_pickup_datetime" in error.detail  # says what a green file needs


def test_yellow_file_named_green_gets_a_hint(tmp_path: Path) -> None:
    yellow = synth_month("yellow", MONTH, rows=500)
    error = _rejects(_write(tmp_path, yellow), ValidationRule.MISSING_COLUMN)
    assert "is it a yellow file?" in error.detail


def test_datetime_stored_as_text_is_wrong_type(tmp_path: Path, good_month: pd.DataFrame) -> None:
    frame = good_month.assign(
        lpep_pickup_datetime=good_month["lpep_pickup_datetime"].dt.strftime("%Y-%m-%d %H:%M:%S")
    )
    error = _rejects(_write(tmp_path, frame), ValidationRule.WRONG_TYPE)
    assert "lpep_pickup_datetime" in error.detail
    assert "expected timestamp" in error.detail
    assert "string" in error.detail


def test_location_with_text_is_wrong_type(tmp_path: Path, good_month: pd.DataFrame) -> None:
    locations = good_month["PULocationID"].astype(float).astype(str)
    locations.iloc[7] = "unknown"
    error = _rejects(
        _write(tmp_path, good_month.assign(PULocationID=locations)), ValidationRule.WRONG_TYPE
    )
    assert "PULocationID" in error.detail
    assert "expected integer or float" in error.detail


def test_fractional_location_is_wrong_type(tmp_path: Path, good_month: pd.DataFrame) -> None:
    locations = good_month["DOLocationID"].astype("float64")
    locations.iloc[3] = 12.5
    error = _rejects(
        _write(tmp_path, good_month.assign(DOLocationID=locations)), ValidationRule.WRONG_TYPE
    )
    assert "DOLocationID" in error.detail
    assert "12.5" in error.detail


def test_all_rows_filtered_out_says_why(tmp_path: Path, good_month: pd.DataFrame) -> None:
    frame = good_month.assign(lpep_dropoff_datetime=good_month["lpep_pickup_datetime"])
    error = _rejects(_write(tmp_path, frame), ValidationRule.NO_ROWS_LEFT)
    assert f"read {len(frame):,} rows" in error.detail
    assert f"duration < 1 min: {len(frame):,}" in error.detail


def test_month_in_name_must_match_the_pickups(tmp_path: Path, good_month: pd.DataFrame) -> None:
    trip_file = _write(tmp_path, good_month, name="green_tripdata_2021-05.parquet")
    error = _rejects(trip_file, ValidationRule.OUTSIDE_MONTH)
    assert error.detail.startswith(f"100% of {len(good_month):,} pickups fall outside 2021-05")
    assert "they span 2021-01-01 .. 2021-01-31" in error.detail
    assert "most in" not in error.detail  # one month found: the span says it all
    assert "misnamed" in error.detail and "at most 5%" in error.detail
    assert "holds the month its name says" in str(error)  # the hint


def _with_strays(frame: pd.DataFrame, strays: int, shift: pd.Timedelta) -> pd.DataFrame:
    """`frame` with the pickups (and dropoffs, so durations hold) of its first rows shifted."""
    moved = frame.copy()
    for column in ("lpep_pickup_datetime", "lpep_dropoff_datetime"):
        moved.loc[: strays - 1, column] = moved.loc[: strays - 1, column] + shift
    return moved


@pytest.mark.parametrize("share", [0.05, 0.2])
def test_a_share_of_strays_up_to_the_limit_is_dropped_row_by_row(
    tmp_path: Path, good_month: pd.DataFrame, share: float
) -> None:
    strays = int(len(good_month) * share)
    trip_file = _write(tmp_path, _with_strays(good_month, strays, pd.Timedelta(days=-40)))

    trips = load_trips(trip_file, max_outside_month_share=share)

    assert trips.report.dropped["pickup outside the file's month"] == strays


def test_one_stray_over_the_limit_rejects_the_file(
    tmp_path: Path, good_month: pd.DataFrame
) -> None:
    strays = len(good_month) // 20 + 1  # 5% + one row
    frame = _with_strays(good_month, strays, pd.Timedelta(days=-40))
    frame.loc[0, "lpep_pickup_datetime"] = pd.Timestamp("2009-01-01 00:03:25")  # a years-old one
    trip_file = _write(tmp_path, frame)

    with pytest.raises(DataValidationError) as caught:
        load_trips(trip_file)

    error = caught.value
    assert error.rule is ValidationRule.OUTSIDE_MONTH and error.path == trip_file.path
    assert error.detail.startswith(f"5.05% of {len(frame):,} pickups fall outside 2021-01")
    assert "they span 2009-01-01 .. 2020-12-" in error.detail
    assert "most in 2020-11" in error.detail or "most in 2020-12" in error.detail


def test_pickups_without_a_time_do_not_count_towards_the_share(
    tmp_path: Path, good_month: pd.DataFrame
) -> None:
    strays = len(good_month) // 20  # exactly 5% of all rows...
    frame = _with_strays(good_month, strays, pd.Timedelta(days=-40))
    frame.loc[len(frame) - 10 :, "lpep_pickup_datetime"] = pd.NaT  # ...but more of the timed

    error = _rejects(_write(tmp_path, frame), ValidationRule.OUTSIDE_MONTH)
    assert f"of {len(frame) - 10:,} pickups" in error.detail


def test_the_share_limit_must_be_a_share(tmp_path: Path, good_month: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="max_outside_month_share"):
        load_trips(_write(tmp_path, good_month), max_outside_month_share=1.5)


def test_empty_table_has_no_rows_left(tmp_path: Path, good_month: pd.DataFrame) -> None:
    path = tmp_path / NAME
    pq.write_table(pa.Table.from_pandas(good_month.head(0), preserve_index=False), path)
    error = _rejects(parse_trip_file(path), ValidationRule.NO_ROWS_LEFT)
    assert "read 0 rows" in error.detail


def test_missing_file_is_not_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trips(parse_trip_file(tmp_path / NAME))
