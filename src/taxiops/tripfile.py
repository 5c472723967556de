"""Month files by name and by content: `<type>_tripdata_YYYY-MM.parquet`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from taxiops.errors import DataValidationError, ValidationRule

TaxiType = Literal["green", "yellow"]
TAXI_TYPES: tuple[TaxiType, ...] = ("green", "yellow")

FILE_NAME_PATTERN = re.compile(
    r"^(?P<type>green|yellow)_tripdata_(?P<year>\d{4})-(?P<month>\d{2})\.parquet$"
)


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month, ordered and printable as YYYY-MM."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1..12, got {self.month}")

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @classmethod
    def parse(cls, text: str) -> Month:
        """Parse `YYYY-MM`."""
        year, _, month = text.partition("-")
        return cls(int(year), int(month))

    def shift(self, months: int) -> Month:
        """The month `months` later (negative: earlier)."""
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)


@dataclass(frozen=True)
class TripFile:
    """A month file recognised by its name: taxi type and month."""

    path: Path
    taxi_type: TaxiType
    month: Month

    @property
    def name(self) -> str:
        return self.path.name


def file_name_for(taxi_type: TaxiType, month: Month) -> str:
    """The canonical file name of a month."""
    return f"{taxi_type}_tripdata_{month}.parquet"


def parse_trip_file(path: Path | str) -> TripFile:
    """Recognise a month file by its name, or raise `DataValidationError` (rule `file-name`)."""
    path = Path(path)
    match = FILE_NAME_PATTERN.match(path.name)
    if match is None:
        raise DataValidationError(
            path,
            ValidationRule.FILE_NAME,
            "file name is not <green|yellow>_tripdata_YYYY-MM.parquet",
        )
    try:
        month = Month(int(match["year"]), int(match["month"]))
    except ValueError:
        raise DataValidationError(
            path, ValidationRule.FILE_NAME, f"{match['year']}-{match['month']} is not a month"
        ) from None
    return TripFile(path=path, taxi_type=cast(TaxiType, match["type"]), month=month)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (never whole into memory)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def earlier_months_in_folder(new_file: TripFile, count: int) -> list[TripFile]:
    """Up to `count` files of the same taxi type before `new_file.month`, oldest first."""
    earlier: list[TripFile] = []
    for candidate in new_file.path.parent.glob(f"{new_file.taxi_type}_tripdata_*.parquet"):
        try:
            parsed = parse_trip_file(candidate)
        except DataValidationError:
            continue
        if parsed.month < new_file.month and candidate.is_file():
            earlier.append(parsed)
    earlier.sort(key=lambda f: f.month)
    return earlier[-count:] if count > 0 else []
