"""Every error taxiops raises on purpose, in one place.

    TaxiopsError
    ├── SettingsError              a TAXIOPS_* (or SLACK_*) value in the environment or .env is invalid
    ├── StartupError               a folder, port or server a command needs is not usable
    ├── DataValidationError        a month file broke a data rule; permanent, never retried
    ├── RegistryError              the model registry could not be read or written
    ├── TaskFailedError            a training step failed after its retries; names the step
    ├── MissingMonthError          a scheduled retrain found no file for the month it expected
    ├── HandOffError               Prefect answered but did not take a file; retried
    ├── PrefectUnreachableError    the Prefect API did not answer (also a ConnectionError)
    ├── PrefectApiError            `taxiops up` cannot reach or start its Prefect API
    ├── ChildFailedError           a child of `taxiops up` kept failing after each restart
    ├── RetryRefusedError          `taxiops retry` cannot retry that file
    ├── AutomationSpecError        an automations/*.yaml file is not a valid automation
    ├── InvalidNoticeError         a notification body is not a taxiops notice (a ValueError)
    ├── NotificationDeliveryError  one channel (Slack, apprise) did not take a message
    └── NotifierError              some channels of a notification failed; lives in
                                   `taxiops.notify.blocks` because it is also Prefect's
                                   `NotificationError`, and this module imports no Prefect
    FetchInterruptedError          Ctrl-C during `taxiops fetch`; lives in `taxiops.intake.fetch`
                                   beside the per-month results it carries

Errors carry their context as attributes so alerts can render them without
parsing messages. Messages name the file or setting, the rule broken and what to do.
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
    ValidationRule.FILE_CHANGED: "nothing to do: the newer bytes are trained in a run of their own",
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


class InvalidNoticeError(TaxiopsError, ValueError):
    """A notification body could not be read as a taxiops notice."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"not a taxiops notice: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason,))


class AutomationSpecError(TaxiopsError):
    """An automation file is not a valid automation."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path.name}: {detail}")


class NotificationDeliveryError(TaxiopsError):
    """A channel did not take a message. The text names the channel, never its URL or token."""

    def __init__(
        self, channel: str, detail: str, *, status: int | None = None, retries: int = 0
    ) -> None:
        self.channel = channel
        self.detail = detail
        self.status = status
        self.retries = retries
        super().__init__(f"{channel}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_delivery_error, (self.channel, self.detail, self.status, self.retries))


def _rebuild_delivery_error(
    channel: str, detail: str, status: int | None, retries: int
) -> NotificationDeliveryError:
    return NotificationDeliveryError(channel, detail, status=status, retries=retries)


class PrefectApiError(TaxiopsError):
    """The Prefect API to use cannot be reached or started."""


class RetryRefusedError(TaxiopsError):
    """A file cannot be retried; the message names it, its state and what to do instead."""

    def __init__(self, file: str, detail: str) -> None:
        self.file = file
        self.detail = detail
        super().__init__(f"cannot retry {file}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.file, self.detail))


class HandOffError(TaxiopsError):
    """The Prefect API answered but did not take a file; it stays pending and is retried."""

    def __init__(self, path: Path | str, api_url: str, detail: str) -> None:
        self.path = Path(path)
        self.api_url = api_url
        self.detail = detail
        super().__init__(f"{self.path.name}: not handed to Prefect at {api_url}: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.api_url, self.detail))


class PrefectUnreachableError(TaxiopsError, ConnectionError):
    """The Prefect API did not answer (refused, timed out, reset); nothing was handed off."""

    def __init__(self, api_url: str, detail: str, path: Path | str | None = None) -> None:
        self.api_url = api_url
        self.detail = detail
        self.path = None if path is None else Path(path)
        waiting = f"{self.path.name} stays pending; " if self.path is not None else ""
        super().__init__(
            f"Prefect API at {api_url} did not answer ({detail}); {waiting}"
            "start it with `taxiops up` or check PREFECT_API_URL"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.api_url, self.detail, self.path))


class ChildFailedError(TaxiopsError):
    """A supervised child kept failing right after each restart."""

    def __init__(self, child: str, failures: int, last_error: str) -> None:
        self.child = child
        self.failures = failures
        self.last_error = last_error
        super().__init__(
            f"{child} failed {failures} times in a row, last: {_first_line(last_error)}; "
            "taxiops up stopped"
        )


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"
