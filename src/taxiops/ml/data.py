"""Read a month file, check it, and prepare the trips the model learns from.

`load_trips` reads only the five columns the model needs, checks the footer's row
count and sizes (`taxiops.ml.footer`) and the columns' presence and types from the
parquet schema before reading any data, then drops unusable
rows with vectorised numpy/pandas, counting every dropped row under exactly one
rule: the first it breaks, in the order the rule names are listed below.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.ml.footer import check_footer
from taxiops.ml.schema import (
    DO_LOCATION,
    DURATION,
    PICKUP,
    PU_LOCATION,
    TRIP_DISTANCE,
    TripColumns,
    TypeKind,
    trip_columns,
)
from taxiops.tripfile import TAXI_TYPES, Month, TripFile

# Names of the drop rules, in the order they are applied. The duration rules
# carry their thresholds, see `duration_rule_names`.
MISSING_DATETIME = "missing pickup/dropoff time"
PICKUP_OUTSIDE_MONTH = "pickup outside the file's month"
MISSING_LOCATION = "missing location"
MISSING_DISTANCE = "missing distance"
NEGATIVE_DISTANCE = "negative distance"

_INT32_MAX = np.iinfo(np.int32).max
_US_PER_MINUTE = 60_000_000


def duration_rule_names(min_minutes: float, max_minutes: float) -> tuple[str, str]:
    """The names of the too-short and too-long rules, e.g. `duration < 1 min`."""
    return f"duration < {min_minutes:g} min", f"duration > {max_minutes:g} min"


@dataclass(frozen=True)
class PrepareReport:
    """What happened to a file's rows: `rows_read == sum(dropped.values()) + rows_kept`;
    `nulls` counts the missing values of each column read, before any rule."""

    rows_read: int
    dropped: dict[str, int]
    rows_kept: int
    nulls: dict[str, int] = field(default_factory=dict)

    @property
    def null_shares(self) -> dict[str, float]:
        """The share of rows read missing each column (0 to 1)."""
        return {name: count / max(self.rows_read, 1) for name, count in self.nulls.items()}

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def describe_drops(self) -> str:
        """The non-zero drops as text, e.g. `duration < 1 min: 1,402; missing location: 3`."""
        parts = [f"{rule}: {count:,}" for rule, count in self.dropped.items() if count]
        return "; ".join(parts) if parts else "none"


@dataclass(frozen=True, eq=False)
class PreparedTrips:
    """Trips ready for the model, and how they were obtained.

    `frame` has exactly the columns of `schema.PREPARED_COLUMNS`: `PULocationID`,
    `DOLocationID` (int32), `trip_distance` (float32), `pickup_datetime`
    (datetime64[us]) and `duration` (float32, minutes), with a fresh RangeIndex.
    """

    frame: pd.DataFrame
    report: PrepareReport
    trip_file: TripFile | None = None

    @property
    def source(self) -> Path:
        """The file the trips came from (a placeholder when built in memory)."""
        return self.trip_file.path if self.trip_file is not None else Path("<in-memory trips>")


def load_trips(
    trip_file: TripFile,
    *,
    data: bytes | None = None,
    max_rows: int | None = None,
    min_minutes: float = 1.0,
    max_minutes: float = 60.0,
    require_pickup_in_month: bool = True,
    max_outside_month_share: float = 0.05,
) -> PreparedTrips:
    """Read, check and prepare one month file.

    With `data`, the file's bytes as the caller read them, the trips are parsed from
    those bytes and the file is not opened again (its path only names it in errors).
    With `max_rows`, a file whose footer declares more rows, or more uncompressed bytes
    in the columns read than that many rows may take, is refused before any is read.
    Keeps trips lasting `min_minutes` to `max_minutes` (inclusive) with both
    locations and a non-negative distance; with `require_pickup_in_month`, only
    trips picked up inside the month named by the file (TLC files carry a few
    stray years-old timestamps), and the whole file is refused when more than
    `max_outside_month_share` of its pickups lie outside that month.

    Raises `DataValidationError` with rule `unreadable-parquet` (empty,
    truncated or non-parquet file), `too-many-rows`, `missing-column`, `wrong-type`,
    `outside-month` or `no-rows-left`. A missing file raises `FileNotFoundError`.
    """
    if not 0 <= min_minutes < max_minutes:
        raise ValueError(f"need 0 <= min_minutes < max_minutes, got {min_minutes}, {max_minutes}")
    if not 0 <= max_outside_month_share <= 1:
        raise ValueError(
            f"max_outside_month_share must be in [0, 1], got {max_outside_month_share}"
        )
    path = trip_file.path
    columns = trip_columns(trip_file.taxi_type)
    table = _read_columns(path, columns, data=data, max_rows=max_rows)

    pickup = _timestamps_us(table, columns.pickup)
    dropoff = _timestamps_us(table, columns.dropoff)
    pu = _location_values(path, table, PU_LOCATION)
    do = _location_values(path, table, DO_LOCATION)
    distance = _float_values(table, TRIP_DISTANCE)
    del table

    nat = np.iinfo(np.int64).min
    pickup_i8 = pickup.view(np.int64)
    dropoff_i8 = dropoff.view(np.int64)
    missing = {  # each column read, before any rule: counted in the report, used by the rules
        columns.pickup: pickup_i8 == nat,
        columns.dropoff: dropoff_i8 == nat,
        PU_LOCATION: np.isnan(pu),
        DO_LOCATION: np.isnan(do),
        TRIP_DISTANCE: np.isnan(distance),
    }
    missing_time = missing[columns.pickup] | missing[columns.dropoff]
    minutes = (dropoff_i8 - pickup_i8).astype(np.float64) / _US_PER_MINUTE
    too_short, too_long = duration_rule_names(min_minutes, max_minutes)

    checks: list[tuple[str, npt.NDArray[np.bool_]]] = [(MISSING_DATETIME, missing_time)]
    if require_pickup_in_month:
        outside = _outside_month(pickup, trip_file.month)
        _check_month_share(path, trip_file.month, pickup, outside, max_outside_month_share)
        checks.append((PICKUP_OUTSIDE_MONTH, outside))
    checks += [
        (MISSING_LOCATION, missing[PU_LOCATION] | missing[DO_LOCATION]),
        (MISSING_DISTANCE, ~np.isfinite(distance)),
        (NEGATIVE_DISTANCE, distance < 0),
        (too_short, minutes < min_minutes),
        (too_long, minutes > max_minutes),
    ]
    keep = np.ones(len(pickup), dtype=bool)
    dropped: dict[str, int] = {}
    for rule, broken in checks:
        hit = broken & keep
        dropped[rule] = int(hit.sum())
        keep &= ~hit

    report = PrepareReport(
        rows_read=len(keep),
        dropped=dropped,
        rows_kept=int(keep.sum()),
        nulls={name: int(mask.sum()) for name, mask in missing.items()},
    )
    if report.rows_kept == 0:
        raise DataValidationError(
            path,
            ValidationRule.NO_ROWS_LEFT,
            f"no trips left after filtering: read {report.rows_read:,} rows, "
            f"dropped {report.describe_drops()}",
        )
    frame = pd.DataFrame(
        {
            PU_LOCATION: pu[keep].astype(np.int32),
            DO_LOCATION: do[keep].astype(np.int32),
            TRIP_DISTANCE: distance[keep].astype(np.float32),
            PICKUP: pickup[keep],
            DURATION: minutes[keep].astype(np.float32),
        }
    )
    return PreparedTrips(frame=frame, report=report, trip_file=trip_file)


def split_by_pickup_time(
    trips: PreparedTrips, validation_fraction: float = 0.2
) -> tuple[PreparedTrips, PreparedTrips]:
    """Split trips by pickup day: the last `validation_fraction` of the days validate.

    Days are the distinct pickup dates present; at least one day goes to each
    side. Each side's report counts the other side's rows as dropped, under
    a rule naming the cut-off day. Raises `DataValidationError` (`no-rows-left`)
    when the trips cover fewer than two days.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    frame = trips.frame
    days = frame[PICKUP].to_numpy(dtype="datetime64[us]").astype("datetime64[D]")
    distinct = np.unique(days)
    if len(distinct) < 2:
        raise DataValidationError(
            trips.source,
            ValidationRule.NO_ROWS_LEFT,
            f"cannot hold out days for validation: the {len(frame):,} trips left "
            f"cover {len(distinct)} day(s), need at least 2",
        )
    validation_days = validation_day_count(len(distinct), validation_fraction)
    cutoff = distinct[len(distinct) - validation_days]
    is_validation = days >= cutoff
    train_side = _subset(trips, ~is_validation, f"pickup on/after {cutoff} (validation days)")
    validation_side = _subset(trips, is_validation, f"pickup before {cutoff} (training days)")
    return train_side, validation_side


def validation_day_count(days: int, validation_fraction: float) -> int:
    """How many of `days` distinct pickup days `split_by_pickup_time` holds out (half rounds up)."""
    return min(max(1, int(days * validation_fraction + 0.5)), days - 1)


# --- reading -----------------------------------------------------------------------


def _read_columns(
    path: Path, columns: TripColumns, *, data: bytes | None, max_rows: int | None
) -> pa.Table:
    """Check the footer and the schema, then read only the needed columns."""
    try:
        with pq.ParquetFile(path if data is None else pa.BufferReader(data)) as parquet:
            if max_rows is not None:
                check_footer(path, parquet.metadata, columns.names, max_rows=max_rows)
            _check_schema(path, parquet.schema_arrow, columns)
            return parquet.read(columns=list(columns.names))
    except (FileNotFoundError, DataValidationError):
        raise
    except (pa.ArrowException, OSError) as error:
        raise DataValidationError(
            path, ValidationRule.UNREADABLE_PARQUET, _unreadable(path, error, data)
        ) from None


def _unreadable(path: Path, error: BaseException, data: bytes | None) -> str:
    try:
        size = path.stat().st_size if data is None else len(data)
    except OSError:
        size = -1
    if size == 0:
        return "the file is empty (0 bytes)"
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"not a readable parquet file, it may be truncated or another format ({reason})"


def _check_schema(path: Path, schema: pa.Schema, columns: TripColumns) -> None:
    present = set(schema.names)
    missing = [name for name in columns.names if name not in present]
    if missing:
        detail = (
            f"missing column(s) {', '.join(missing)}; a {columns.taxi_type} file needs "
            f"{', '.join(columns.names)}"
        )
        for other in TAXI_TYPES:
            other_columns = trip_columns(other)
            if other != columns.taxi_type and other_columns.pickup in present:
                detail += f" (it has {other_columns.pickup}: is it a {other} file?)"
        raise DataValidationError(path, ValidationRule.MISSING_COLUMN, detail)
    for name, kinds in columns.accepted_kinds.items():
        found = schema.field(name).type
        if not any(kind.accepts(found) for kind in kinds):
            expected = " or ".join(kind.value for kind in kinds if kind is not TypeKind.NULL)
            raise DataValidationError(
                path, ValidationRule.WRONG_TYPE, f"column {name} is {found}, expected {expected}"
            )


# --- column conversion ---------------------------------------------------------------


def _timestamps_us(table: pa.Table, name: str) -> npt.NDArray[np.datetime64]:
    column = table.column(name)
    if column.type.tz is not None:
        # TLC writes naive local times; a zoned column is compared as its UTC instants.
        column = column.cast(pa.timestamp(column.type.unit))
    if column.type.unit != "us":
        column = column.cast(pa.timestamp("us"), safe=False)
    values: npt.NDArray[np.datetime64] = column.to_numpy()
    return values


def _float_values(table: pa.Table, name: str) -> npt.NDArray[np.float64]:
    column = table.column(name)
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    values: npt.NDArray[np.float64] = column.cast(pa.float64()).to_numpy()
    return values


def _location_values(path: Path, table: pa.Table, name: str) -> npt.NDArray[np.float64]:
    """Location IDs as float64 with NaN for missing; non-integer values are a wrong type."""
    values = _float_values(table, name)
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(values) & (
            (values != np.floor(values)) | (values < 0) | (values > _INT32_MAX)
        )
    if bad.any():
        example = values[bad][0]
        raise DataValidationError(
            path,
            ValidationRule.WRONG_TYPE,
            f"column {name} holds values that are not zone IDs (e.g. {float(example):g} in "
            f"{int(bad.sum()):,} rows), expected whole non-negative numbers",
        )
    infinite = np.isinf(values)
    if infinite.any():
        values = np.where(infinite, np.nan, values)
    return values


def _outside_month(pickup: npt.NDArray[np.datetime64], month: Month) -> npt.NDArray[np.bool_]:
    start = np.datetime64(f"{month}-01", "us")
    end = np.datetime64(f"{month.shift(1)}-01", "us")
    outside: npt.NDArray[np.bool_] = (pickup < start) | (pickup >= end)
    return outside


def _check_month_share(
    path: Path,
    month: Month,
    pickup: npt.NDArray[np.datetime64],
    outside: npt.NDArray[np.bool_],
    max_share: float,
) -> None:
    """Refuse the file when more than `max_share` of the pickups that have a time fall
    outside `month`: a few strays are dropped row by row, this many mean a wrong name."""
    timed = int((~np.isnat(pickup)).sum())
    count = int(outside.sum())  # NaT compares False, so is never outside
    if timed == 0 or count / timed <= max_share:
        return
    days = pickup[outside].astype("datetime64[D]")
    months, counts = np.unique(days.astype("datetime64[M]"), return_counts=True)
    span = f"they span {days.min()} .. {days.max()}"
    if len(months) > 1:
        span += f", most in {months[counts.argmax()]}"
    raise DataValidationError(
        path,
        ValidationRule.OUTSIDE_MONTH,
        f"{_percent(count / timed)} of {timed:,} pickups fall outside {month} ({span}); "
        f"at most {_percent(max_share)} may; is the file misnamed?",
    )


def _percent(share: float) -> str:
    """A share as a percentage with three significant digits: `98%`, `5.1%`, `0.04%`."""
    return f"{share * 100:.3g}%"


def _subset(
    trips: PreparedTrips, mask: npt.NDArray[np.bool_], other_side_rule: str
) -> PreparedTrips:
    frame = trips.frame.loc[mask].reset_index(drop=True)
    if frame.empty:
        raise DataValidationError(
            trips.source,
            ValidationRule.NO_ROWS_LEFT,
            f"no trips left on one side of the split ({other_side_rule})",
        )
    report = replace(
        trips.report,
        dropped={**trips.report.dropped, other_side_rule: len(trips.frame) - len(frame)},
        rows_kept=len(frame),
    )
    return PreparedTrips(frame=frame, report=report, trip_file=trips.trip_file)
