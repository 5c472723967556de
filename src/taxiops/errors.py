"""Every error taxiops raises on purpose.

    TaxiopsError
    ├── DataValidationError      a month file broke a data rule; permanent, never retried
    ├── RegistryError            the model registry could not be read or written
    ├── TaskFailedError          a training step failed after its retries; names the step
    ├── MissingMonthError        a scheduled retrain found no file for the month it expected
    ├── SettingsError            a TAXIOPS_* (or SLACK_*) value in the environment or .env is invalid
    └── StartupError             a folder, port or server a command needs is not usable

Errors carry their context as attributes so alerts can render them without
parsing messages. Messages name the file, the rule broken and what to do.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


class TaxiopsError(Exception):
    """Root of all taxiops errors."""


class ValidationRule(StrEnum):
    """The rules a month file can break, as shown in alerts and reason files."""

    FILE_NAME = "file-name"
    NOT_A_FILE = "not-a-file"
    SYMLINK_OUTSIDE = "symlink-outside"
    TOO_LARGE = "too-large"
    TOO_MANY_ROWS = "too-many-rows"
    UNREADABLE_PARQUET = "unreadable-parquet"
    MISSING_COLUMN = "missing-column"
    WRONG_TYPE = "wrong-type"
    OUTSIDE_MONTH = "outside-month"
    NO_ROWS_LEFT = "no-rows-left"
    FILE_CHANGED = "file-changed"
    FILE_VANISHED = "file-vanished"

    @property
    def hint(self) -> str:
        """What to do about a file broken this way."""
        return _HINTS[self]

    @property
    def keeps_file(self) -> bool:
        """Whether a file broken this way is moved to quarantine (the others are gone, or
        replaced by new bytes that get a run of their own)."""
        return self not in (ValidationRule.FILE_CHANGED, ValidationRule.FILE_VANISHED)


_HINTS: dict[ValidationRule, str] = {
    ValidationRule.FILE_NAME: "name it <green|yellow>_tripdata_YYYY-MM.parquet",
    ValidationRule.NOT_A_FILE: "drop regular month files only, not folders or devices",
    ValidationRule.SYMLINK_OUTSIDE: "copy the file into the incoming folder instead of linking it",
    ValidationRule.TOO_LARGE: "raise TAXIOPS_MAX_FILE_BYTES if the month is genuine",
    ValidationRule.TOO_MANY_ROWS: "raise TAXIOPS_MAX_FILE_ROWS if the month is genuine",
    ValidationRule.UNREADABLE_PARQUET: "re-export the month as parquet from the TLC source",
    ValidationRule.MISSING_COLUMN: "check the file is a TLC trip record of the named taxi type",
    ValidationRule.WRONG_TYPE: "check the file is a TLC trip record of the named taxi type",
    ValidationRule.OUTSIDE_MONTH: "check the file holds the month its name says",
    ValidationRule.NO_ROWS_LEFT: "check the pickup/dropoff datetimes of the month",
    ValidationRule.FILE_CHANGED: "nothing to do: the new bytes are trained in a run of their own",
    ValidationRule.FILE_VANISHED: "drop the month again if it was removed by mistake",
}


class DataValidationError(TaxiopsError):
    """A month file broke a data rule. Retrying cannot help; fix or replace the file."""

    def __init__(self, path: Path | str, rule: ValidationRule, detail: str) -> None:
        self.path = Path(path)
        self.rule = rule
        self.detail = detail
        super().__init__(f"{self.path.name}: {rule.value}: {detail} ({self.hint})")

    @property
    def hint(self) -> str:
        """What to do about it."""
        return self.rule.hint

    def __reduce__(self) -> tuple[object, ...]:
        # Keep attributes across pickling (Prefect persists failed states).
        return (type(self), (self.path, self.rule, self.detail))


class RegistryError(TaxiopsError):
    """The model registry could not be read or written."""

    def __init__(self, location: Path | str, detail: str) -> None:
        self.location = Path(location)
        self.detail = detail
        super().__init__(f"model registry at {self.location}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.location, self.detail))


TASK_FAILED_PREFIX = "task "


class TaskFailedError(TaxiopsError):
    """A training step failed (after its retries, if the fault looked transient)."""

    def __init__(self, task: str, detail: str) -> None:
        self.task = task
        self.detail = detail
        super().__init__(f"{TASK_FAILED_PREFIX}{task} failed: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.detail))


class MissingMonthError(TaxiopsError):
    """A scheduled retrain expected a month file that has not arrived."""

    def __init__(self, taxi_type: str, month: str, folder: Path | str) -> None:
        self.taxi_type = taxi_type
        self.month = month
        self.folder = Path(folder)
        super().__init__(
            f"missing month: no {taxi_type}_tripdata_{month}.parquet in {self.folder}; "
            "refusing to retrain on old data"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.taxi_type, self.month, self.folder))


class SettingsError(TaxiopsError):
    """A setting in the environment or `.env` has a value taxiops cannot use."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems  # (variable, what is wrong)
        listed = "; ".join(f"{variable}: {detail}" for variable, detail in problems)
        super().__init__(f"{listed} (fix it in the environment or .env)")


class StartupError(TaxiopsError):
    """Something a command needs before it can start is missing or wrong."""

    def __init__(self, setting: str, detail: str, hint: str) -> None:
        self.setting = setting
        self.detail = detail
        self.hint = hint
        super().__init__(f"{setting}: {detail}; {hint}")
