"""Synthetic and resampled TLC months, for tests, demos and benchmarks.

`synth_month` draws trips in a small made-up city of 265 zones whose layout is
the same for every month and seed, so a model trained on one synthetic month
predicts the next: durations follow the pickup and dropoff zones (how central,
hence how congested, each is), the distance, the hour and weekday, plus noise.
Like real TLC files, a few percent of rows are unusable (zero-minute,
negative and hours-long trips) and about a tenth have the optional columns
(passenger count, rate code, payment type, ...) null.
"""

from __future__ import annotations

import calendar
import os
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from taxiops.ml.schema import tlc_file_schema, trip_columns
from taxiops.tripfile import Month, TaxiType, file_name_for

ZONES = 265
UNKNOWN_ZONES = (264, 265)  # TLC's "NV" and "NA" zones
AIRPORT_ZONES = (132, 138)  # JFK and LaGuardia

_CITY_SEED = 20_210_101  # the city never changes; only trips do
_US_PER_SECOND = 1_000_000

# Share of each outlier kind among all rows (real green months: ~2% under a
# minute, ~1-1.5% over an hour).
_SHARE_TOO_SHORT = 0.02
_SHARE_TOO_LONG = 0.012
_SHARE_NEGATIVE = 0.002
_SHARE_OPTIONAL_NULL = 0.1

# Trips per hour of the day, midnight first: quiet nights, busy afternoons.
_HOURLY_WEIGHTS = np.array(
    [3, 2, 1.5, 1, 1, 1.5, 3, 5, 6, 6, 6, 6, 6.5, 6.5, 7, 7.5, 8, 8, 7.5, 6.5, 5.5, 5, 4.5, 4]
)


@dataclass(frozen=True)
class _City:
    """Zone geography: positions (miles), popularity, congestion and destination choice."""

    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    popularity: npt.NDArray[np.float64]
    pace: npt.NDArray[np.float64]  # minutes per mile when driving through the zone
    pair_factor: npt.NDArray[np.float64]  # (ZONES, ZONES) slow or fast routes
    destination_cdf: npt.NDArray[np.float64]  # (ZONES, ZONES) cumulative P(DO | PU)
    central: npt.NDArray[np.bool_]

    def destination(
        self, pickup: npt.NDArray[np.int64], uniform: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        """Dropoff zone indices drawn from P(DO | PU) by inverting the cumulative rows."""
        # Row r of the cdf shifted by r is one increasing array over all rows.
        stacked = (self.destination_cdf + np.arange(ZONES)[:, None]).ravel()
        index = np.searchsorted(stacked, pickup + uniform, side="right") - pickup * ZONES
        dropoff: npt.NDArray[np.int64] = np.minimum(index, ZONES - 1).astype(np.int64)
        return dropoff


@cache
def _city() -> _City:
    rng = np.random.default_rng(_CITY_SEED)
    # A dense core (think Manhattan) and sprawling outer zones.
    core = rng.random(ZONES) < 0.3
    x = np.where(core, rng.normal(10, 1.2, ZONES), rng.uniform(0, 24, ZONES))
    y = np.where(core, rng.normal(14, 3.0, ZONES), rng.uniform(0, 24, ZONES))
    from_center = np.hypot(x - 10, y - 14)
    popularity = rng.lognormal(0, 1.5, ZONES)
    unknown = np.array(UNKNOWN_ZONES) - 1
    popularity[unknown] *= 0.05
    pace = 2.2 + 3.8 * np.exp(-from_center / 4) * rng.lognormal(0, 0.15, ZONES)
    pair_factor = rng.lognormal(0, 0.12, (ZONES, ZONES))
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    weights = popularity[None, :] * np.exp(-distance / 1.6)
    destination_cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    destination_cdf[:, -1] = 1.0
    return _City(x, y, popularity, pace, pair_factor, destination_cdf, from_center < 4)


def synth_month(
    taxi_type: TaxiType, month: Month, rows: int = 20_000, seed: int = 0
) -> pd.DataFrame:
    """A month of made-up trips with every column and dtype of a real TLC file of `taxi_type`.

    Deterministic for (`taxi_type`, `month`, `rows`, `seed`); pickups all fall
    inside `month`. The frame is what `pandas.read_parquet` gives for a real file.
    """
    frame: pd.DataFrame = _synth_table(taxi_type, month, rows, seed).to_pandas()
    return frame


def write_synth_month(
    folder: Path, taxi_type: TaxiType, month: Month, rows: int = 20_000, seed: int = 0
) -> Path:
    """Write `folder/<type>_tripdata_YYYY-MM.parquet` atomically and return its path.

    The file appears complete or not at all (written to a hidden temporary file
    in the same folder, then renamed), so a folder watcher never sees half a file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name_for(taxi_type, month)
    table = _synth_table(taxi_type, month, rows, seed)
    # A name of our own rather than mkstemp, whose 0600 would make the month unreadable to
    # others: pyarrow creates the file with the usual umask-respecting mode.
    temporary = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_repeated(path: Path, table: pa.Table, rows: int, *, rows_per_group: int) -> Path:
    """Write `rows` rows to `path` by repeating `table`'s rows in order, one row group of
    `rows_per_group` at a time (so memory holds one group, never the whole file).

    One repeated trip compresses to almost nothing: that is how a row bomb is made.
    """
    if rows < 1 or rows_per_group < 1 or table.num_rows == 0:
        raise ValueError(f"need rows, rows_per_group >= 1 and a non-empty table, got {rows}")
    picks = np.arange(min(rows, rows_per_group)) % table.num_rows
    group = table.combine_chunks().take(pa.array(picks))
    with pq.ParquetWriter(path, table.schema) as writer:
        written = 0
        while written < rows:
            part = group.slice(0, min(rows - written, group.num_rows))
            writer.write_table(part, row_group_size=part.num_rows)
            written += part.num_rows
    return path


def resample_month(source: Path, rows: int, seed: int = 0) -> pd.DataFrame:
    """Bootstrap-resample a real month file to `rows` rows (all columns, same dtypes)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    table = pq.read_table(source)
    if table.num_rows == 0:
        raise ValueError(f"{source} has no rows to resample")
    picks = np.random.default_rng(seed).integers(0, table.num_rows, rows)
    frame: pd.DataFrame = table.take(pa.array(picks)).to_pandas()
    return frame


def _synth_table(taxi_type: TaxiType, month: Month, rows: int, seed: int) -> pa.Table:
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    city = _city()
    type_index = 0 if taxi_type == "green" else 1
    rng = np.random.default_rng([seed, month.year, month.month, type_index])

    # --- where and when ------------------------------------------------------------
    pu = rng.choice(ZONES, size=rows, p=city.popularity / city.popularity.sum())
    do = city.destination(pu, rng.random(rows))
    start = np.datetime64(f"{month}-01", "us")
    days = calendar.monthrange(month.year, month.month)[1]
    hour = rng.choice(24, size=rows, p=_HOURLY_WEIGHTS / _HOURLY_WEIGHTS.sum())
    second_of_day = hour * 3600 + rng.integers(0, 3600, rows)
    day = rng.integers(0, days, rows)
    pickup = start + ((day * 86_400 + second_of_day) * _US_PER_SECOND).astype("timedelta64[us]")
    weekday = (pickup.astype("datetime64[D]").view(np.int64) + 3) % 7

    # --- how far and how long ------------------------------------------------------------
    straight = np.hypot(city.x[pu] - city.x[do], city.y[pu] - city.y[do])
    distance = (1.3 * straight + rng.uniform(0.3, 1.0, rows)) * rng.lognormal(0, 0.12, rows)
    rush = np.isin(hour, (7, 8, 9, 16, 17, 18, 19)) & (weekday < 5)
    night = np.isin(hour, (0, 1, 2, 3, 4, 5))
    traffic = np.where(rush, 1.35, np.where(night, 0.75, 1.0)) * np.where(weekday >= 5, 0.9, 1.0)
    pace = 0.5 * (city.pace[pu] + city.pace[do]) * city.pair_factor[pu, do] * traffic
    minutes = (3.0 + distance * pace) * rng.lognormal(0, 0.2, rows)
    unknown = np.isin(pu + 1, UNKNOWN_ZONES) | np.isin(do + 1, UNKNOWN_ZONES)
    minutes = np.where(unknown, rng.uniform(3, 50, rows), minutes)

    # --- the unusable rows real files carry ------------------------------------------------
    kind = rng.random(rows)
    too_short = kind < _SHARE_TOO_SHORT
    too_long = (kind >= _SHARE_TOO_SHORT) & (kind < _SHARE_TOO_SHORT + _SHARE_TOO_LONG)
    negative = (kind >= _SHARE_TOO_SHORT + _SHARE_TOO_LONG) & (
        kind < _SHARE_TOO_SHORT + _SHARE_TOO_LONG + _SHARE_NEGATIVE
    )
    minutes = np.where(too_short, rng.uniform(0, 0.99, rows), minutes)
    distance = np.where(too_short & (rng.random(rows) < 0.7), 0.0, distance)
    minutes = np.where(too_long, rng.uniform(61, 1439, rows), minutes)
    minutes = np.where(negative, -rng.uniform(1, 30, rows), minutes)
    # Whole seconds, as the TLC records them.
    dropoff = pickup + (np.round(minutes * 60) * _US_PER_SECOND).astype("timedelta64[us]")
    distance = np.round(distance, 2)

    # --- the money and the rest --------------------------------------------------------------
    optional_null = rng.random(rows) < _SHARE_OPTIONAL_NULL
    vendor = np.where(rng.random(rows) < 0.15, 1, 2).astype(np.int64)
    rate_code = np.where(np.isin(pu + 1, AIRPORT_ZONES), 2.0, 1.0)
    rate_code = np.where(rng.random(rows) < 0.01, 5.0, rate_code)
    passengers = rng.choice([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 5.0, 0.0], size=rows)
    payment = np.where(rng.random(rows) < 0.6, 1.0, 2.0)
    payment = np.where(rng.random(rows) < 0.01, 3.0, payment)
    fare = np.round(np.maximum(2.5 + 2.5 * distance + 0.5 * np.clip(minutes, 0, 180), 2.5), 2)
    extra = rng.choice([0.0, 0.5, 1.0], size=rows, p=[0.5, 0.3, 0.2])
    mta_tax = np.full(rows, 0.5)
    tip = np.where(payment == 1.0, np.round(fare * rng.uniform(0.1, 0.25, rows), 2), 0.0)
    tolls = np.where(rng.random(rows) < 0.02, 6.55, 0.0)
    improvement = np.full(rows, 0.3)
    congestion = np.where(city.central[do] | city.central[pu], 2.75, 0.0)
    airport = np.where(np.isin(pu + 1, AIRPORT_ZONES), 1.25, 0.0)
    total = np.round(fare + extra + mta_tax + tip + tolls + improvement + congestion, 2)
    store_and_forward = np.where(rng.random(rows) < 0.005, "Y", "N")
    trip_type = np.where(rng.random(rows) < 0.03, 2.0, 1.0)

    def nullable(values: npt.NDArray[np.generic]) -> pa.Array:
        return pa.array(values, mask=optional_null)

    pickup_name = trip_columns(taxi_type).pickup
    dropoff_name = trip_columns(taxi_type).dropoff
    columns: dict[str, pa.Array] = {
        "VendorID": pa.array(vendor),
        pickup_name: pa.array(pickup),
        dropoff_name: pa.array(dropoff),
        "store_and_fwd_flag": nullable(store_and_forward),
        "RatecodeID": nullable(rate_code),
        "PULocationID": pa.array((pu + 1).astype(np.int64)),
        "DOLocationID": pa.array((do + 1).astype(np.int64)),
        "passenger_count": nullable(passengers),
        "trip_distance": pa.array(distance),
        "fare_amount": pa.array(fare),
        "extra": pa.array(extra),
        "mta_tax": pa.array(mta_tax),
        "tip_amount": pa.array(tip),
        "tolls_amount": pa.array(tolls),
        "ehail_fee": pa.nulls(rows),
        "improvement_surcharge": pa.array(improvement),
        "total_amount": pa.array(total + (airport if taxi_type == "yellow" else 0.0)),
        "payment_type": nullable(payment),
        "trip_type": nullable(trip_type),
        "congestion_surcharge": nullable(congestion),
        "airport_fee": nullable(airport),
    }
    schema = tlc_file_schema(taxi_type)
    if taxi_type == "yellow":
        # Yellow stores payment_type as int64 and writes 0 where the record is incomplete.
        columns["payment_type"] = pa.array(np.where(optional_null, 0, payment).astype(np.int64))
    arrays = [columns[field.name].cast(field.type) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
