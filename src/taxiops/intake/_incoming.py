"""A month file that finished arriving: its name, its bytes, and how we know it is complete."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from taxiops.payloads import DataArrived
from taxiops.tripfile import Month, TaxiType, parse_trip_file, sha256_of

PARQUET_MAGIC = b"PAR1"

TouchKind = Literal["closed", "moved", "created", "modified", "scan"]


@dataclass(frozen=True)
class FileTouched:
    """Something happened to a path in the watched folder; check it after a quiet spell."""

    path: Path
    kind: TouchKind


@dataclass(frozen=True)
class FileSignature:
    """Size and mtime: equal signatures a settle period apart mean the writer is done."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class IncomingFile:
    """A complete month file, known by its content: what the ledger records, Prefect gets."""

    path: Path
    taxi_type: TaxiType
    month: Month
    sha256: str
    size: int

    def event_payload(self, flow_run_id: str | None = None) -> dict[str, Any]:
        """The payload of the `taxiops.data.arrived` event (`taxiops.payloads.DataArrived`)."""
        return DataArrived(
            path=str(self.path),
            taxi_type=self.taxi_type,
            month=str(self.month),
            sha256=self.sha256,
            size=self.size,
            flow_run_id=flow_run_id,
        ).model_dump(mode="json")


def has_parquet_footer(path: Path) -> bool:
    """Whether the file ends in a readable parquet footer (`PAR1` magic and parseable metadata).

    A parquet writer emits the footer last, so a file still being written fails this check.
    """
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < 12:  # header magic + footer length + footer magic
                return False
            handle.seek(-4, os.SEEK_END)
            if handle.read(4) != PARQUET_MAGIC:
                return False
    except OSError:
        return False

    import pyarrow.parquet as pq  # heavy import, only when a file is actually checked

    try:
        with pq.ParquetFile(path) as parquet:
            parquet.metadata  # noqa: B018 - parsing the footer is the check
    except Exception:  # pyarrow raises ArrowInvalid, OSError, ... for a torn footer
        return False
    return True


def describe_incoming(path: Path) -> IncomingFile:
    """Name and hash a month file; `DataValidationError` when the name is not a month's."""
    trip = parse_trip_file(path)
    size = path.stat().st_size
    return IncomingFile(
        path=path,
        taxi_type=trip.taxi_type,
        month=trip.month,
        sha256=sha256_of(path),
        size=size,
    )
