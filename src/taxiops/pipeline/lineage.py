"""Values passed between tasks, each carrying the fingerprint of the data it came from.

`cache_fingerprint` is what the task cache keys on: the SHA-256 of the file's
bytes plus the rules applied since, never a path.

A run reads each month file once (`MonthBytes.read`): the bytes it hashes are the
bytes it parses, so a file replaced on disk meanwhile cannot make the record name
other bytes than the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.tripfile import TripFile, parse_trip_file

if TYPE_CHECKING:
    from taxiops.ml import DurationModel, PreparedTrips, TrainingParams

MonthPart = Literal["all", "train", "validation"]


@dataclass(frozen=True)
class FingerprintedFile:
    """A month file and the hash of the bytes the run read from it (see `MonthBytes`)."""

    trip: TripFile
    sha256: str
    size: int

    @property
    def cache_fingerprint(self) -> str:
        return self.sha256

    @property
    def path(self) -> Path:
        return self.trip.path


@dataclass(frozen=True, eq=False)
class MonthBytes:
    """The bytes of a month file as one read returned them, and their fingerprint.

    Never a task result: results are persisted, and these bytes are the whole file.
    """

    file: FingerprintedFile
    data: bytes = field(repr=False)

    @property
    def cache_fingerprint(self) -> str:
        return self.file.sha256

    @classmethod
    def read(cls, path: Path | str, *, max_bytes: int) -> MonthBytes:
        """Recognise a month file by name, read its bytes once and hash them.

        Raises `DataValidationError`: `file-name`, or `too-large` when the file holds more
        than `max_bytes` (checked before reading, and again on what was read, in case it
        grew); `FileNotFoundError` when nothing is at `path`.
        """
        trip = parse_trip_file(path)
        with trip.path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= max_bytes:
                data = handle.read(max_bytes + 1)
                size = len(data)
        if size > max_bytes:
            raise DataValidationError(
                trip.path,
                ValidationRule.TOO_LARGE,
                f"{size:,} bytes is more than the limit of {max_bytes:,} bytes",
            )
        digest = hashlib.sha256(data).hexdigest()
        return cls(file=FingerprintedFile(trip=trip, sha256=digest, size=size), data=data)


@dataclass(frozen=True)
class MonthData:
    """Prepared trips of a month file, or of the train/validation part of one."""

    file: FingerprintedFile
    trips: PreparedTrips
    part: MonthPart
    rules: str

    @property
    def cache_fingerprint(self) -> str:
        return f"{self.file.sha256}:{self.part}:{self.rules}"

    @property
    def label(self) -> str:
        suffix = "" if self.part == "all" else f" ({self.part})"
        return f"{self.file.trip.month}{suffix}"


@dataclass(frozen=True)
class TrainedModel:
    """A challenger fresh from training, with what it was trained on."""

    model: DurationModel
    params: TrainingParams
    months: tuple[str, ...]
    data_sha256: dict[str, str]
    train_rows: int
    model_key: str

    @property
    def cache_fingerprint(self) -> str:
        return self.model_key


def model_key(months: list[MonthData], params: TrainingParams, code_version: str) -> str:
    """Identity of a training: the data fingerprints, parameters and code that made it."""
    blob = json.dumps(
        {
            "data": [m.cache_fingerprint for m in months],
            "params": params.as_dict(),
            "code": code_version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def version_key(training_key: str, validation: MonthData) -> str:
    """Identity of a registry version: the training (`model_key`) and the month data it
    was judged on. The same training judged on other bytes of a month (a replaced file)
    is another version, with its own scores: the registry never reuses one for it."""
    blob = json.dumps({"training": training_key, "validation": validation.cache_fingerprint})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
