"""Which months the monthly retrain expects and finds."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from taxiops.pipeline.schedule import expected_month, newest_month_files, plan_retrain
from taxiops.tripfile import Month


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def test_expected_month_is_lag_months_before_the_run() -> None:
    assert expected_month(date(2024, 3, 2), 1) == Month(2024, 2)
    assert expected_month(date(2024, 1, 2), 1) == Month(2023, 12)
    assert expected_month(date(2024, 1, 2), 0) == Month(2024, 1)


def test_newest_month_per_taxi_type_ignores_other_files(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "green_tripdata_2023-01.parquet",
        "green_tripdata_2023-03.parquet",
        "yellow_tripdata_2022-12.parquet",
        "green_tripdata_2023-13.parquet",
        "notes.txt",
    )
    (tmp_path / "green_tripdata_2024-01.parquet").mkdir()

    newest = newest_month_files(tmp_path)

    assert {t: str(f.month) for t, f in newest.items()} == {"green": "2023-03", "yellow": "2022-12"}


def test_plan_flags_the_missing_month_and_keeps_the_present_one(tmp_path: Path) -> None:
    touch(tmp_path, "green_tripdata_2024-02.parquet", "yellow_tripdata_2024-01.parquet")

    plans = {
        p.taxi_type: p for p in plan_retrain(tmp_path, ["green", "yellow"], date(2024, 3, 2), 1)
    }

    assert not plans["green"].missing and plans["green"].newest is not None
    assert plans["yellow"].missing and str(plans["yellow"].expected) == "2024-02"


def test_a_taxi_type_with_no_file_at_all_is_missing(tmp_path: Path) -> None:
    (plan,) = plan_retrain(tmp_path, ["yellow"], date(2024, 3, 2), 1)
    assert plan.missing and plan.newest is None
