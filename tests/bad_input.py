"""Every kind of bad input issue 5 names, made on demand: for end-to-end tests and bench/soak.

Each kind is written in a staging folder (same filesystem, not watched) and moved into
the incoming folder in one rename, as a copy tool would; `expected_rule` is what the
quarantine reason file and the alert must name (None: nothing is kept, nothing alerts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from taxiops.ml import synth_month
from taxiops.tripfile import Month, TaxiType

ROWS = 2_000


@dataclass(frozen=True)
class BadKind:
    """One kind of bad input: how to make it and the rule it must be rejected for."""

    name: str
    expected_rule: str | None
    make: Callable[[Path, Path, Month, int], Path]  # (incoming, staging, month, seed) -> entry
    checked_by: str  # "watcher" or "flow"


def _table(month: Month, seed: int, taxi_type: TaxiType = "green") -> pa.Table:
    return pa.Table.from_pandas(
        synth_month(taxi_type, month, rows=ROWS, seed=seed), preserve_index=False
    )


def _land(staging: Path, incoming: Path, name: str, write: Callable[[Path], object]) -> Path:
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / name
    write(staged)
    target = incoming / name
    os.replace(staged, target)
    return target


def _name(month: Month) -> str:
    return f"green_tripdata_{month}.parquet"


def zero_byte(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    return _land(staging, incoming, _name(month), lambda p: p.write_bytes(b""))


def truncated_parquet(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    def write(path: Path) -> None:
        pq.write_table(_table(month, seed), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return _land(staging, incoming, _name(month), write)


def csv_renamed(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    def write(path: Path) -> None:
        path.write_text(_table(month, seed).slice(0, 50).to_pandas().to_csv(index=False))

    return _land(staging, incoming, _name(month), write)


def impossible_month(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    name = f"green_tripdata_{month.year}-13.parquet"
    return _land(staging, incoming, name, lambda p: pq.write_table(_table(month, seed), p))


def symlink_outside(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    outside = staging / f"outside-{month}-{seed}.parquet"
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(month, seed), outside)
    link = incoming / _name(month)
    link.symlink_to(outside)
    return link


def too_large(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    """A sparse file of 64 MiB: beyond the small TAXIOPS_MAX_FILE_BYTES the tests set."""

    def write(path: Path) -> None:
        with path.open("wb") as handle:
            handle.write(b"PAR1")
            handle.truncate(64 * 1024**2)

    return _land(staging, incoming, _name(month), write)


def directory(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    def write(path: Path) -> None:
        path.mkdir()
        pq.write_table(_table(month, seed), path / "part-0.parquet")

    return _land(staging, incoming, _name(month), write)


def name_with_space(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    name = f"green_tripdata_{month} (1).parquet"
    return _land(staging, incoming, name, lambda p: pq.write_table(_table(month, seed), p))


def unicode_name(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    name = f"grün_tripdata_{month}.parquet"
    return _land(staging, incoming, name, lambda p: pq.write_table(_table(month, seed), p))


def missing_column(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    table = _table(month, seed)
    table = table.drop_columns(["trip_distance"])
    return _land(staging, incoming, _name(month), lambda p: pq.write_table(table, p))


def renamed_column(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    table = _table(month, seed)
    names = ["pu_location" if n == "PULocationID" else n for n in table.column_names]
    table = table.rename_columns(names)
    return _land(staging, incoming, _name(month), lambda p: pq.write_table(table, p))


def wrong_type(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    table = _table(month, seed)
    index = table.column_names.index("trip_distance")
    as_text = pa.array([str(v) for v in table.column(index).to_pylist()], pa.string())
    table = table.set_column(index, "trip_distance", as_text)
    return _land(staging, incoming, _name(month), lambda p: pq.write_table(table, p))


def all_filtered(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    """Every trip lasts two hours: nothing survives the [1, 60] minute rule."""
    frame = synth_month("green", month, rows=ROWS, seed=seed)
    frame["lpep_dropoff_datetime"] = frame["lpep_pickup_datetime"] + pd.Timedelta(hours=2)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return _land(staging, incoming, _name(month), lambda p: pq.write_table(table, p))


def outside_month(incoming: Path, staging: Path, month: Month, seed: int) -> Path:
    """The previous month's trips under this month's name."""
    table = _table(month.shift(-1), seed)
    return _land(staging, incoming, _name(month), lambda p: pq.write_table(table, p))


BAD_KINDS: dict[str, BadKind] = {
    kind.name: kind
    for kind in (
        BadKind("zero-byte", "unreadable-parquet", zero_byte, "watcher"),
        BadKind("truncated-parquet", "unreadable-parquet", truncated_parquet, "watcher"),
        BadKind("csv-renamed", "unreadable-parquet", csv_renamed, "watcher"),
        BadKind("impossible-month", "file-name", impossible_month, "watcher"),
        BadKind("symlink-outside", "symlink-outside", symlink_outside, "watcher"),
        BadKind("too-large", "too-large", too_large, "watcher"),
        BadKind("directory", "not-a-file", directory, "watcher"),
        BadKind("name-with-space", "file-name", name_with_space, "watcher"),
        BadKind("unicode-name", "file-name", unicode_name, "watcher"),
        BadKind("missing-column", "missing-column", missing_column, "flow"),
        BadKind("renamed-column", "missing-column", renamed_column, "flow"),
        BadKind("wrong-type", "wrong-type", wrong_type, "flow"),
        BadKind("all-filtered", "no-rows-left", all_filtered, "flow"),
        BadKind("outside-month", "outside-month", outside_month, "flow"),
    )
}
