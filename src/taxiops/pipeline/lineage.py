"""Values passed between tasks, each carrying the fingerprint of the data it came from.

`cache_fingerprint` is what the task cache keys on: the SHA-256 of the file's
bytes plus the rules applied since, never a path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from taxiops.tripfile import TripFile, parse_trip_file, sha256_of

if TYPE_CHECKING:
    from taxiops.ml import DurationModel, PreparedTrips, TrainingParams

MonthPart = Literal["all", "train", "validation"]


@dataclass(frozen=True)
class FingerprintedFile:
    """A month file and the hash of its bytes when the run read it."""

    trip: TripFile
    sha256: str
    size: int

    @property
    def cache_fingerprint(self) -> str:
        return self.sha256

    @property
    def path(self) -> Path:
        return self.trip.path

    @classmethod
    def of(cls, path: Path | str) -> FingerprintedFile:
        """Recognise a month file by name and hash its bytes."""
        trip = parse_trip_file(path)
        return cls(trip=trip, sha256=sha256_of(trip.path), size=trip.path.stat().st_size)


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
