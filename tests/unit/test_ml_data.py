"""Data tests of prepared trips: schema, ranges, nulls, drop accounting, the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.ml import (
    PreparedTrips,
    load_trips,
    split_by_pickup_time,
    synth_month,
    write_synth_month,
)
from taxiops.ml.data import (
    MISSING_DISTANCE,
    MISSING_LOCATION,
    NEGATIVE_DISTANCE,
    PICKUP_OUTSIDE_MONTH,
    validation_day_count,
)
from taxiops.ml.schema import PREPARED_COLUMNS
from taxiops.tripfile import Month, parse_trip_file

MONTH = Month(2021, 3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedTrips:
    folder = tmp_path_factory.mktemp("incoming")
    return load_trips(parse_trip_file(write_synth_month(folder, "green", MONTH, rows=5_000)))


def check_prepared_frame(
    trips: PreparedTrips, *, min_minutes: float = 1, max_minutes: float = 60
) -> None:
    """The data contract of a prepared frame."""
    frame = trips.frame
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == PREPARED_COLUMNS
    assert isinstance(frame.index, pd.RangeIndex)
    assert not frame.isna().any().any()
    assert frame["duration"].between(min_minutes, max_minutes).all()
    assert (frame["trip_distance"] >= 0).all()
    assert (frame["PULocationID"] >= 0).all() and (frame["DOLocationID"] >= 0).all()
    report = trips.report
    assert report.rows_kept == len(frame)
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())


def test_prepared_frame_keeps_the_contract(prepared: PreparedTrips) -> None:
    check_prepared_frame(prepared)
    assert prepared.frame["pickup_datetime"].dt.month.eq(3).all()
    assert prepared.report.rows_read == 5_000


def test_every_rule_is_reported_even_when_nothing_broke_it(prepared: PreparedTrips) -> None:
    assert list(prepared.report.dropped) == [
        "missing pickup/dropoff time",
        PICKUP_OUTSIDE_MONTH,
        MISSING_LOCATION,
        MISSING_DISTANCE,
        NEGATIVE_DISTANCE,
        "duration < 1 min",
        "duration > 60 min",
    ]
    # synth plants ~2% too-short (incl. negative) and ~1% over-an-hour trips
    assert prepared.report.dropped["duration < 1 min"] > 50
    assert prepared.report.dropped["duration > 60 min"] > 20


def test_duration_thresholds_are_configurable(tmp_path: Path) -> None:
    trip_file = parse_trip_file(write_synth_month(tmp_path, "green", MONTH, rows=3_000))
    trips = load_trips(trip_file, min_minutes=5, max_minutes=30)
    check_prepared_frame(trips, min_minutes=5, max_minutes=30)
    assert {"duration < 5 min", "duration > 30 min"} <= set(trips.report.dropped)


def test_each_dropped_row_counts_under_one_rule(tmp_path: Path) -> None:
    """Float location IDs (as some TLC years store them) with nulls, NaN and negative distances."""
    frame = synth_month("green", MONTH, rows=1_000, seed=5)
    pu = frame["PULocationID"].astype("float64")
    distance = frame["trip_distance"].copy()
    # row 0 breaks location and distance rules and is too short: counted once, as missing location
    pu.iloc[[0, 1, 2]] = np.nan
    distance.iloc[[0, 3, 4]] = np.nan
    distance.iloc[[5, 6]] = -1.0
    frame = frame.assign(PULocationID=pu, trip_distance=distance)
    frame.loc[[0], "lpep_dropoff_datetime"] = frame.loc[[0], "lpep_pickup_datetime"].to_numpy()
    frame.loc[7, "lpep_pickup_datetime"] = pd.Timestamp("2009-01-01 00:03:25")
    frame.loc[7, "lpep_dropoff_datetime"] = pd.Timestamp("2009-01-01 00:13:25")
    path = tmp_path / "green_tripdata_2021-03.parquet"
    frame.to_parquet(path, index=False)
    assert pq.read_schema(path).field("PULocationID").type == pa.float64()

    trips = load_trips(parse_trip_file(path))

    check_prepared_frame(trips)
    dropped = trips.report.dropped
    assert dropped[PICKUP_OUTSIDE_MONTH] == 1
    assert dropped[MISSING_LOCATION] == 3
    assert dropped[MISSING_DISTANCE] == 2
    assert dropped[NEGATIVE_DISTANCE] == 2
    assert trips.frame["PULocationID"].dtype == np.int32
    # Missing values are counted per column before any rule (row 0 lacks two of them).
    assert trips.report.nulls == {
        "lpep_pickup_datetime": 0,
        "lpep_dropoff_datetime": 0,
        "PULocationID": 3,
        "DOLocationID": 0,
        "trip_distance": 3,
    }
    assert trips.report.null_shares["trip_distance"] == pytest.approx(3 / 1_000)


def test_newer_narrow_integer_layout_is_accepted(tmp_path: Path) -> None:
    """TLC green 2023-02 stores IDs as int32 and strings as large_string."""
    table = pa.Table.from_pandas(synth_month("green", MONTH, rows=500), preserve_index=False)
    for name in ("VendorID", "PULocationID", "DOLocationID"):
        table = table.set_column(
            table.schema.get_field_index(name), name, table[name].cast(pa.int32())
        )
    path = tmp_path / "green_tripdata_2021-03.parquet"
    pq.write_table(table, path)
    check_prepared_frame(load_trips(parse_trip_file(path)))


def test_pickups_outside_the_month_can_be_kept(tmp_path: Path) -> None:
    trip_file = parse_trip_file(write_synth_month(tmp_path, "green", MONTH, rows=500))
    renamed = trip_file.path.rename(tmp_path / "green_tripdata_2022-07.parquet")
    trips = load_trips(parse_trip_file(renamed), require_pickup_in_month=False)
    assert PICKUP_OUTSIDE_MONTH not in trips.report.dropped
    assert trips.report.rows_kept > 400


def test_yellow_files_prepare_to_the_same_frame(tmp_path: Path) -> None:
    trips = load_trips(parse_trip_file(write_synth_month(tmp_path, "yellow", MONTH, rows=2_000)))
    check_prepared_frame(trips)


def test_real_month_prepares_cleanly(shared_data: Path) -> None:
    trips = load_trips(parse_trip_file(shared_data / "green_tripdata_2021-01.parquet"))
    check_prepared_frame(trips)
    assert trips.report.rows_read == 76_518
    assert 70_000 < trips.report.rows_kept < 76_518
    assert trips.frame["PULocationID"].between(1, 265).all()


@pytest.mark.parametrize("month", ["2021-01", "2021-02", "2023-01", "2023-02"])
def test_real_months_hold_far_fewer_strays_than_the_outside_month_limit(
    shared_data: Path, month: str
) -> None:
    """Real TLC months carry < 0.05% pickups outside their month: 100x under the 5% default."""
    trips = load_trips(
        parse_trip_file(shared_data / f"green_tripdata_{month}.parquet"),
        max_outside_month_share=0.0005,
    )
    assert 0 < trips.report.dropped[PICKUP_OUTSIDE_MONTH] < trips.report.rows_read * 0.0005


# --- split -----------------------------------------------------------------------------


def test_split_holds_out_the_last_days(prepared: PreparedTrips) -> None:
    train, validation = split_by_pickup_time(prepared, validation_fraction=0.2)
    assert len(train.frame) + len(validation.frame) == len(prepared.frame)
    assert train.frame["pickup_datetime"].max() < validation.frame["pickup_datetime"].min()
    validation_days = validation.frame["pickup_datetime"].dt.normalize().unique()
    assert len(validation_days) == validation_day_count(31, 0.2) == 6
    for side in (train, validation):
        check_prepared_frame(side)
        assert side.trip_file == prepared.trip_file


@pytest.mark.parametrize(
    ("days", "fraction", "held_out"), [(31, 0.2, 6), (28, 0.2, 6), (2, 0.2, 1), (2, 0.9, 1)]
)
def test_validation_day_count(days: int, fraction: float, held_out: int) -> None:
    assert validation_day_count(days, fraction) == held_out


def test_split_of_a_single_day_is_refused(prepared: PreparedTrips) -> None:
    frame = prepared.frame
    one_day = frame[frame["pickup_datetime"].dt.day == 10].reset_index(drop=True)
    trips = PreparedTrips(frame=one_day, report=prepared.report, trip_file=prepared.trip_file)
    with pytest.raises(DataValidationError) as caught:
        split_by_pickup_time(trips)
    assert caught.value.rule is ValidationRule.NO_ROWS_LEFT
    assert "1 day(s)" in caught.value.detail


def test_split_rejects_a_silly_fraction(prepared: PreparedTrips) -> None:
    with pytest.raises(ValueError, match="validation_fraction"):
        split_by_pickup_time(prepared, validation_fraction=1.0)
