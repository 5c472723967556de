"""Synthetic months look like real TLC files and behave deterministically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from taxiops.ml import resample_month, synth_month, write_synth_month
from taxiops.ml.schema import tlc_file_schema
from taxiops.tripfile import Month, TaxiType, parse_trip_file

FEBRUARY = Month(2024, 2)


def _real_schema(path: Path) -> list[tuple[str, str]]:
    return [(field.name, str(field.type)) for field in pq.read_schema(path)]


def test_green_schema_equals_a_real_file(tmp_path: Path, shared_data: Path) -> None:
    real = shared_data / "green_tripdata_2021-01.parquet"
    written = write_synth_month(tmp_path, "green", Month(2021, 1), rows=200)
    assert _real_schema(written) == _real_schema(real)
    real_frame = pd.read_parquet(real)
    assert synth_month("green", Month(2021, 1), rows=200).dtypes.equals(real_frame.dtypes)


def test_real_green_months_share_the_column_names(shared_data: Path) -> None:
    expected = tlc_file_schema("green").names
    for path in sorted(shared_data.glob("green_tripdata_*.parquet")):
        assert pq.read_schema(path).names == expected, path.name


@pytest.mark.parametrize("taxi_type", ["green", "yellow"])
def test_written_file_has_the_declared_schema(tmp_path: Path, taxi_type: TaxiType) -> None:
    path = write_synth_month(tmp_path, taxi_type, FEBRUARY, rows=300)
    assert path.name == f"{taxi_type}_tripdata_2024-02.parquet"
    assert parse_trip_file(path).month == FEBRUARY
    assert pq.read_schema(path).remove_metadata().equals(tlc_file_schema(taxi_type))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_yellow_has_its_own_columns() -> None:
    columns = set(synth_month("yellow", FEBRUARY, rows=10).columns)
    assert {"tpep_pickup_datetime", "tpep_dropoff_datetime", "airport_fee"} <= columns
    assert not {"lpep_pickup_datetime", "ehail_fee", "trip_type"} & columns


def test_same_seed_same_month() -> None:
    pd.testing.assert_frame_equal(
        synth_month("green", FEBRUARY, rows=1_000, seed=7),
        synth_month("green", FEBRUARY, rows=1_000, seed=7),
    )


def test_other_seed_or_month_differs() -> None:
    base = synth_month("green", FEBRUARY, rows=1_000, seed=7)
    assert not base.equals(synth_month("green", FEBRUARY, rows=1_000, seed=8))
    assert not base["trip_distance"].equals(
        synth_month("green", Month(2024, 3), rows=1_000, seed=7)["trip_distance"]
    )


def test_pickups_fall_inside_the_month() -> None:
    frame = synth_month("yellow", FEBRUARY, rows=5_000)
    pickup = frame["tpep_pickup_datetime"]
    assert pickup.min() >= pd.Timestamp("2024-02-01")
    assert pickup.max() < pd.Timestamp("2024-03-01")
    assert pickup.dt.day.nunique() == 29  # a leap February, every day present
    assert frame["tpep_dropoff_datetime"].max() < pd.Timestamp("2024-03-02")


def test_a_few_percent_of_rows_are_outliers_like_real_data() -> None:
    frame = synth_month("green", FEBRUARY, rows=20_000)
    minutes = (
        frame["lpep_dropoff_datetime"] - frame["lpep_pickup_datetime"]
    ).dt.total_seconds() / 60
    assert 0.01 < (minutes < 1).mean() < 0.05
    assert 0.005 < (minutes > 60).mean() < 0.05
    assert (minutes < 0).any()
    assert 0.05 < frame["passenger_count"].isna().mean() < 0.2
    assert frame["ehail_fee"].isna().all()
    assert not frame[["PULocationID", "DOLocationID", "trip_distance"]].isna().any().any()
    assert frame["PULocationID"].between(1, 265).all()


def test_durations_follow_zones_and_distance() -> None:
    frame = synth_month("green", FEBRUARY, rows=20_000)
    minutes = (
        frame["lpep_dropoff_datetime"] - frame["lpep_pickup_datetime"]
    ).dt.total_seconds() / 60
    usable = minutes.between(1, 60)
    correlation = np.corrcoef(frame.loc[usable, "trip_distance"], minutes[usable])[0, 1]
    assert correlation > 0.6


def test_resample_keeps_schema_and_draws_rows(tmp_path: Path) -> None:
    source = write_synth_month(tmp_path, "green", FEBRUARY, rows=500)
    resampled = resample_month(source, rows=2_000, seed=1)
    original = pd.read_parquet(source)
    assert len(resampled) == 2_000
    assert resampled.dtypes.equals(original.dtypes)
    assert set(resampled["lpep_pickup_datetime"]) <= set(original["lpep_pickup_datetime"])
    pd.testing.assert_frame_equal(resampled, resample_month(source, rows=2_000, seed=1))


def test_synthetic_months_are_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_synth_month(tmp_path, "green", Month.parse("2023-01"), rows=100)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
