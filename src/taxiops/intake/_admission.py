"""Admission: what to do with an entry of the incoming folder, decided by looking at it once.

    gone ────────────────────────────────────────────────> Gone
    a link resolving outside the folder, or dangling ───────> Refused  symlink-outside
    a folder, pipe, device or socket (or a link to one) ─────> Refused  not-a-file
    not <green|yellow>_tripdata_YYYY-MM.parquet, month 13 ───> Refused  file-name
    larger than max_file_bytes ──────────────────────────────> Refused  too-large
    first bytes are not PAR1 (a CSV renamed .parquet) ───────> Refused  unreadable-parquet
    empty, or no readable parquet footer yet ────────────────> StillArriving (refused only
                                                                if it stays like this)
    footer declares more than max_file_rows rows (a bomb) ───> Refused  too-many-rows
    otherwise ───────────────────────────────────────────────> Admitted

Only looks: never moves or hashes anything, never opens what a link out of the folder
points to. The caller decides when to look (after a close, or once the size settled)
and how long a file may stay `StillArriving`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.intake._incoming import PARQUET_MAGIC, FileSignature, has_parquet_footer
from taxiops.settings import Settings
from taxiops.tripfile import parse_trip_file


@dataclass(frozen=True)
class Admitted:
    """A complete month file: hash it and record it."""

    path: Path
    size: int


@dataclass(frozen=True)
class Refused:
    """An entry that breaks a rule: quarantine it."""

    error: DataValidationError


@dataclass(frozen=True)
class StillArriving:
    """An empty or footer-less month file: its writer may not be done. `error` is the
    refusal to use if it stays unchanged for the incomplete-file timeout."""

    error: DataValidationError


@dataclass(frozen=True)
class Gone:
    """Nothing is at the path any more."""

    path: Path


Verdict = Admitted | Refused | StillArriving | Gone


def inspect_entry(
    path: Path,
    folder: Path,
    *,
    max_file_bytes: int,
    max_file_rows: int = Settings.model_fields["max_file_rows"].default,
) -> Verdict:
    """Decide what `path`, an entry of the (resolved) incoming `folder`, is.

    Raises `OSError` only when the entry exists but cannot be looked at (permissions).
    """
    try:
        entry = path.lstat()
    except FileNotFoundError:
        return Gone(path)
    if stat.S_ISLNK(entry.st_mode):
        target = _link_target(path)
        if not target.is_relative_to(folder):
            return _refuse(
                path,
                ValidationRule.SYMLINK_OUTSIDE,
                f"is a symbolic link to {target}, outside the incoming folder {folder}",
            )
        try:
            entry = path.stat()
        except OSError:
            return _refuse(
                path,
                ValidationRule.SYMLINK_OUTSIDE,
                f"is a symbolic link to {target}, which does not exist",
            )
    if stat.S_ISDIR(entry.st_mode):
        return _refuse(path, ValidationRule.NOT_A_FILE, "is a folder, not a file")
    if not stat.S_ISREG(entry.st_mode):
        return _refuse(
            path, ValidationRule.NOT_A_FILE, "is not a regular file (a pipe, device or socket)"
        )
    try:
        trip = parse_trip_file(path)
    except DataValidationError as exc:
        return Refused(exc)
    if entry.st_size > max_file_bytes:
        return _refuse(
            path,
            ValidationRule.TOO_LARGE,
            f"{entry.st_size:,} bytes is more than the limit of {max_file_bytes:,} bytes",
        )
    if entry.st_size == 0:
        return StillArriving(
            DataValidationError(path, ValidationRule.UNREADABLE_PARQUET, "the file is empty")
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(len(PARQUET_MAGIC))
    except FileNotFoundError:
        return Gone(path)
    if head != PARQUET_MAGIC:
        if len(head) < len(PARQUET_MAGIC) and PARQUET_MAGIC.startswith(head):
            return StillArriving(
                DataValidationError(
                    path, ValidationRule.UNREADABLE_PARQUET, f"only {len(head)} bytes long"
                )
            )
        return _refuse(
            path,
            ValidationRule.UNREADABLE_PARQUET,
            f"not a parquet file: it starts with {head!r}, not {PARQUET_MAGIC!r} "
            "(a CSV or text file renamed .parquet?)",
        )
    if not has_parquet_footer(path):
        return StillArriving(
            DataValidationError(
                path,
                ValidationRule.UNREADABLE_PARQUET,
                "no readable parquet footer (truncated, or the writer stopped)",
            )
        )
    from taxiops.ml.footer import footer_refusal  # pyarrow: only when a file is checked

    if (bomb := footer_refusal(trip, max_rows=max_file_rows)) is not None:
        return Refused(bomb)
    return Admitted(path, entry.st_size)


def entry_signature(path: Path, folder: Path) -> FileSignature | None:
    """Size and mtime of what a check of `path` reads: the file a link inside `folder` points
    to, otherwise the entry itself (a link out of the folder is not followed). None when
    nothing is at `path`."""
    try:
        entry = path.lstat()
        if stat.S_ISLNK(entry.st_mode) and _link_target(path).is_relative_to(folder):
            entry = path.stat()
    except OSError:
        try:
            entry = path.lstat()  # a dangling link: its own metadata
        except OSError:
            return None
    return FileSignature(size=entry.st_size, mtime_ns=entry.st_mtime_ns)


def _link_target(path: Path) -> Path:
    # realpath, not Path.resolve: it neither raises on a loop nor needs the target to exist.
    return Path(os.path.realpath(path))


def _refuse(path: Path, rule: ValidationRule, detail: str) -> Refused:
    return Refused(DataValidationError(path, rule, detail))
