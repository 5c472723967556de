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
    error = _rejects(trip_file, ValidationRule.NO_ROWS_LEFT)
    assert "pickup outside the file's month" in error.detail


def test_empty_table_has_no_rows_left(tmp_path: Path, good_month: pd.DataFrame) -> None:
    path = tmp_path / NAME
    pq.write_table(pa.Table.from_pandas(good_month.head(0), preserve_index=False), path)
    error = _rejects(parse_trip_file(path), ValidationRule.NO_ROWS_LEFT)
    assert "read 0 rows" in error.detail


def test_missing_file_is_not_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trips(parse_trip_file(tmp_path / NAME))
