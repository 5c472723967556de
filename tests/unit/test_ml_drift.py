"""Drift of a new month against the training months (`taxiops.ml.drift`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taxiops.ml import compare_months, load_trips, write_synth_month
from taxiops.ml.data import PreparedTrips
from taxiops.ml.drift import DRIFT_THRESHOLD, population_stability
from taxiops.tripfile import Month, parse_trip_file

FEATURES = {"trip_distance", "duration", "pickup hour", "PULocationID", "DOLocationID"}


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    shares = np.array([0.25, 0.25, 0.25, 0.25])
    assert population_stability(shares, shares) == 0.0
    small = population_stability(shares, np.array([0.3, 0.25, 0.25, 0.2]))
    large = population_stability(shares, np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0 < small < DRIFT_THRESHOLD < large
    assert np.isfinite(population_stability(shares, np.array([1.0, 0.0, 0.0, 0.0])))


def test_a_month_like_its_predecessor_does_not_drift_a_shifted_one_does(
    synth_pair: tuple[PreparedTrips, PreparedTrips],
) -> None:
    before, after = synth_pair
    steady = compare_months([before.frame], after.frame)
    assert set(steady.psi) == FEATURES and steady.drifted == []

    shifted = after.frame.assign(
        trip_distance=after.frame["trip_distance"] * 1.6,
        duration=(after.frame["duration"] * 1.4).clip(upper=60),
    )
    report = compare_months([before.frame], shifted)
    assert set(report.drifted) == {"trip_distance", "duration"}
    assert all(report.psi[name] >= DRIFT_THRESHOLD for name in report.drifted)
    assert report.psi["pickup hour"] < DRIFT_THRESHOLD


def test_zones_seen_only_in_the_new_month_count_as_drift(
    synth_pair: tuple[PreparedTrips, PreparedTrips],
) -> None:
    before, after = synth_pair
    moved = after.frame.assign(PULocationID=np.int32(999))  # every pickup in an unseen zone
    assert "PULocationID" in compare_months([before.frame], moved).drifted


def test_real_consecutive_months_do_not_drift_months_two_years_apart_do(
    shared_data: Path,
) -> None:
    def real(name: str) -> PreparedTrips:
        return load_trips(parse_trip_file(shared_data / name))

    january, february = (
        real("green_tripdata_2023-01.parquet"),
        real("green_tripdata_2023-02.parquet"),
    )
    assert compare_months([january.frame], february.frame).drifted == []
    older = real("green_tripdata_2021-01.parquet")
    assert compare_months([older.frame], february.frame).drifted != []


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedTrips, PreparedTrips]:
    folder = tmp_path_factory.mktemp("months")
    january, february = (
        write_synth_month(folder, "green", Month.parse(month), rows=20_000, seed=seed)
        for month, seed in (("2023-01", 1), ("2023-02", 2))
    )
    return load_trips(parse_trip_file(january)), load_trips(parse_trip_file(february))
