"""What a month file would cost to read, judged from its parquet footer before any data is.

A small file can expand a lot: 17 MB of run-length encoded copies of one trip declare
200 million rows, which decode to many gigabytes. The footer says how many rows, row
groups and uncompressed bytes the columns hold, so such a file is refused unread:

    more rows than `max_rows` ──────────────────────────────> too-many-rows
    the columns read expand past `max_rows` rows' worth ─────> too-many-rows
      (`BYTES_PER_ROW` each: a huge dictionary page, say)
    more than `MAX_ROW_GROUPS` row groups ───────────────────> too-many-rows

The columns not read (strings such as `store_and_fwd_flag`) cost nothing: `load_trips`
reads only the columns the model needs. The sizes are what the writer declared; a file
that lies in its page headers is beyond what a footer can show.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.ml.schema import trip_columns
from taxiops.tripfile import TripFile

#: Uncompressed bytes one row of the needed columns may take: five fixed-width values of
#: at most 8 bytes, levels included, with room to spare (real TLC months take 20-24).
BYTES_PER_ROW = 80
#: Real TLC months hold 1 to a few dozen row groups; each costs per-chunk overhead.
MAX_ROW_GROUPS = 10_000


def check_footer(
    path: Path, metadata: pq.FileMetaData, columns: Sequence[str], *, max_rows: int
) -> None:
    """Refuse a file whose footer declares more than reading `columns` of `max_rows` rows
    may cost; raises `DataValidationError` (`too-many-rows`)."""
    if metadata.num_rows > max_rows:
        _refuse(
            path,
            f"its parquet footer declares {metadata.num_rows:,} rows, more than the limit "
            f"of {max_rows:,}",
        )
    if metadata.num_row_groups > MAX_ROW_GROUPS:
        _refuse(
            path,
            f"its parquet footer declares {metadata.num_row_groups:,} row groups, more than "
            f"the {MAX_ROW_GROUPS:,} any month needs",
        )
    budget = max_rows * BYTES_PER_ROW
    expanded = uncompressed_bytes(metadata, columns)
    if expanded > budget:
        _refuse(
            path,
            f"the columns read expand to {expanded:,} bytes, more than the {budget:,} "
            f"that {max_rows:,} rows may take",
        )


def uncompressed_bytes(metadata: pq.FileMetaData, columns: Sequence[str]) -> int:
    """Uncompressed bytes (dictionary pages included) of the named top-level columns."""
    wanted = set(columns)
    indices = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path in wanted]
    total = 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        total += sum(row_group.column(i).total_uncompressed_size for i in indices)
    return total


def footer_refusal(trip_file: TripFile, *, max_rows: int) -> DataValidationError | None:
    """Why the month file's footer alone refuses it (`check_footer` on the columns its taxi
    type reads), or None; a footer that cannot be read is left to the caller's own
    readability check."""
    try:
        with pq.ParquetFile(trip_file.path) as parquet:
            metadata = parquet.metadata
    except Exception:  # pyarrow raises ArrowInvalid, OSError, ... for a torn footer
        return None
    columns = trip_columns(trip_file.taxi_type).names
    try:
        check_footer(trip_file.path, metadata, columns, max_rows=max_rows)
    except DataValidationError as refusal:
        return refusal
    return None


def _refuse(path: Path, detail: str) -> None:
    raise DataValidationError(path, ValidationRule.TOO_MANY_ROWS, detail)
