"""The footer check: row bombs, huge strings and too many row groups refused before reading."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.intake import inspect_entry
from taxiops.intake._admission import Admitted, Refused
from taxiops.ml import load_trips, synth_month, write_repeated
from taxiops.ml.footer import BYTES_PER_ROW, MAX_ROW_GROUPS, check_footer, footer_refusal
from taxiops.ml.schema import trip_columns
from taxiops.settings import Settings
from taxiops.tripfile import Month, parse_trip_file

NAME = "green_tripdata_2023-03.parquet"
COLUMNS = trip_columns("green").names


def _month(rows: int = 50) -> pa.Table:
    return pa.Table.from_pandas(
        synth_month("green", Month(2023, 3), rows=rows, seed=2), preserve_index=False
    )


def _refusal(path: Path, max_rows: int) -> DataValidationError:
    with pytest.raises(DataValidationError) as raised:
        load_trips(parse_trip_file(path), max_rows=max_rows)
    assert raised.value.rule is ValidationRule.TOO_MANY_ROWS
    return raised.value


def test_a_row_bomb_is_refused_from_its_footer(tmp_path: Path) -> None:
    bomb = write_repeated(tmp_path / NAME, _month().slice(0, 1), 2_000_000, rows_per_group=500_000)
    assert bomb.stat().st_size < 1_000_000

    error = _refusal(bomb, max_rows=1_999_999)

    assert "declares 2,000,000 rows, more than the limit of 1,999,999" in error.detail
    assert "TAXIOPS_MAX_FILE_ROWS" in error.hint
    assert load_trips(parse_trip_file(bomb), max_rows=2_000_000).report.rows_read == 2_000_000


def test_huge_values_in_a_column_read_are_refused_by_their_uncompressed_size(
    tmp_path: Path,
) -> None:
    table = _month(100)
    # Distinct, so the dictionary page holds them all; zstd shrinks them to almost nothing.
    text = pa.array([str(i) + "9" * 20_000 for i in range(table.num_rows)])
    index = table.schema.get_field_index("trip_distance")
    pq.write_table(
        table.set_column(index, "trip_distance", text), tmp_path / NAME, compression="zstd"
    )
    assert (tmp_path / NAME).stat().st_size < 100_000

    error = _refusal(tmp_path / NAME, max_rows=1_000)

    assert f"more than the {1_000 * BYTES_PER_ROW:,} that 1,000 rows may take" in error.detail


def test_too_many_row_groups_are_refused(tmp_path: Path) -> None:
    table = _month(1).select(list(COLUMNS))
    path = write_repeated(tmp_path / NAME, table, MAX_ROW_GROUPS + 1, rows_per_group=1)

    error = _refusal(path, max_rows=10**6)

    assert f"declares {MAX_ROW_GROUPS + 1:,} row groups" in error.detail


def test_the_watchers_admission_refuses_a_bomb_and_admits_the_same_file_under_a_higher_limit(
    tmp_path: Path,
) -> None:
    bomb = write_repeated(tmp_path / NAME, _month().slice(0, 1), 300_000, rows_per_group=100_000)

    refused = inspect_entry(bomb, tmp_path, max_file_bytes=10**9, max_file_rows=299_999)
    admitted = inspect_entry(bomb, tmp_path, max_file_bytes=10**9, max_file_rows=300_000)

    assert isinstance(refused, Refused) and refused.error.rule is ValidationRule.TOO_MANY_ROWS
    assert isinstance(admitted, Admitted)


def test_real_months_pass_with_the_default_limit(shared_data: Path) -> None:
    limit = Settings.model_fields["max_file_rows"].default
    for path in sorted(shared_data.glob("green_tripdata_*.parquet")):
        metadata = pq.ParquetFile(path).metadata
        check_footer(path, metadata, COLUMNS, max_rows=limit)
        # Even a limit of twice their rows leaves room for their uncompressed size.
        check_footer(path, metadata, COLUMNS, max_rows=2 * metadata.num_rows)
        assert footer_refusal(parse_trip_file(path), max_rows=limit) is None


def test_an_unreadable_footer_is_left_to_the_readability_check(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(b"PAR1 not really PAR1")
    assert footer_refusal(parse_trip_file(tmp_path / NAME), max_rows=1) is None
