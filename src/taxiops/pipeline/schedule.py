"""What the monthly retrain should train on, decided from the files present."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from taxiops.errors import DataValidationError
from taxiops.tripfile import Month, TaxiType, TripFile, parse_trip_file


@dataclass(frozen=True)
class RetrainPlan:
    """For one taxi type: the month expected by now, and the newest month present."""

    taxi_type: TaxiType
    expected: Month
    newest: TripFile | None

    @property
    def missing(self) -> bool:
        return self.newest is None or self.newest.month < self.expected


def expected_month(today: date, lag_months: int) -> Month:
    """The newest month that should have arrived by `today`, `lag_months` after its end."""
    return Month(today.year, today.month).shift(-lag_months)


def newest_month_files(folder: Path) -> dict[TaxiType, TripFile]:
    """The newest well-named month file of each taxi type in `folder`."""
    newest: dict[TaxiType, TripFile] = {}
    for path in folder.glob("*_tripdata_*.parquet"):
        try:
            trip = parse_trip_file(path)
        except DataValidationError:
            continue
        if path.is_file() and (
            trip.taxi_type not in newest or newest[trip.taxi_type].month < trip.month
        ):
            newest[trip.taxi_type] = trip
    return newest


def plan_retrain(
    folder: Path, taxi_types: list[TaxiType], today: date, lag_months: int
) -> list[RetrainPlan]:
    """One plan per taxi type."""
    newest = newest_month_files(folder)
    expected = expected_month(today, lag_months)
    return [RetrainPlan(taxi_type=t, expected=expected, newest=newest.get(t)) for t in taxi_types]
