"""Bad input is kept, never deleted: moved to the quarantine folder with a reason file beside it.

    data/incoming/green_tripdata_2023-13.parquet
        -> data/quarantine/green_tripdata_2023-13.parquet
           data/quarantine/green_tripdata_2023-13.parquet.reason.json

The reason file is written first (atomically, under its final name) and the entry is
then moved with one rename, under a lock on the quarantine folder so two processes never
pick the same name. A crash in between leaves the original in place and a reason file
with no entry beside it, which `quarantined_entries` skips and the next rejection of the
same file replaces. Across filesystems the entry is copied to a temporary name first, so
no half-copy ever carries the final name. A symlink is moved as the link, never followed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from taxiops.errors import DataValidationError, ValidationRule
from taxiops.fileio import exclusive_lock, fsync_dir, write_atomically

REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class QuarantinedFile:
    """Where a rejected entry went and why."""

    original: Path
    path: Path
    reason_path: Path
    rule: ValidationRule
    detail: str
    message: str


def quarantine(
    error: DataValidationError,
    folder: Path,
    *,
    by: str,
    sha256: str | None = None,
) -> QuarantinedFile | None:
    """Move `error.path` (file, folder or link) into `folder` with a reason file next to it.

    Returns None when the entry is already gone (another process moved it first).
    `by` says who rejected it, e.g. `watcher host:pid` or `flow run <id>`.
    Raises `OSError` when the quarantine folder cannot be written.
    """
    original = error.path
    folder.mkdir(parents=True, exist_ok=True)
    # One lock on the folder: choosing a free name and renaming into it is one step.
    with exclusive_lock(folder / ".lock"):
        if not os.path.lexists(original):
            return None
        target = _free_name(folder, original.name)
        reason_path = target.with_name(target.name + REASON_SUFFIX)
        reason = {
            "file": original.name,
            "original_path": str(original),
            "quarantined_path": str(target),
            "rule": error.rule.value,
            "detail": error.detail,
            "hint": error.hint,
            "message": str(error),
            "sha256": sha256,
            "size": _size(original),
            "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "by": by,
        }
        write_atomically(reason_path, json.dumps(reason, indent=2, ensure_ascii=False) + "\n")
        try:
            _move(original, target)
        except FileNotFoundError:
            reason_path.unlink(missing_ok=True)
            return None
        except BaseException:
            reason_path.unlink(missing_ok=True)
            raise
        fsync_dir(folder)  # the move survives a crash, like its reason file
    return QuarantinedFile(
        original=original,
        path=target,
        reason_path=reason_path,
        rule=error.rule,
        detail=error.detail,
        message=str(error),
    )


def read_reason(quarantined: Path) -> dict[str, object]:
    """The reason file of a quarantined entry, as written by `quarantine`."""
    reason_path = quarantined.with_name(quarantined.name + REASON_SUFFIX)
    loaded: dict[str, object] = json.loads(reason_path.read_text(encoding="utf-8"))
    return loaded


def quarantined_entries(folder: Path) -> list[Path]:
    """Every quarantined entry in `folder` (present, with a reason file), oldest first."""
    if not folder.is_dir():
        return []
    entries = [
        reason.with_name(reason.name[: -len(REASON_SUFFIX)])
        for reason in folder.glob(f"*{REASON_SUFFIX}")
    ]
    entries = [entry for entry in entries if os.path.lexists(entry)]
    return sorted(entries, key=lambda entry: _mtime(entry))


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or a time-stamped variant when an earlier rejection holds that name."""
    candidate = folder / name
    if not _taken(candidate):
        return candidate
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    for n in range(1, 10_000):
        variant = f"{stem}.{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = folder / (f"{variant}.{suffix}" if suffix else variant)
        if not _taken(candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, f"no free quarantine name for {name}", str(folder))


def _taken(candidate: Path) -> bool:
    reason = candidate.with_name(candidate.name + REASON_SUFFIX)
    return os.path.lexists(candidate) or os.path.lexists(reason)


def _move(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Another filesystem: copy to a temporary name, rename, then delete the source
        # (links are recreated, not followed).
        temp = target.with_name(f".{uuid.uuid4().hex}.copying")
        try:
            if source.is_symlink():
                os.symlink(os.readlink(source), temp)
            elif source.is_dir():
                shutil.copytree(source, temp, symlinks=True)
            else:
                shutil.copy2(source, temp)
            os.rename(temp, target)
        except BaseException:
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
            raise
        if source.is_dir() and not source.is_symlink():
            shutil.rmtree(source)
        else:
            source.unlink()


def _size(path: Path) -> int | None:
    try:
        return path.lstat().st_size
    except OSError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0
