"""What happened: the notice model, its kinds and facts, and reading it from JSON.

A `Notice` is one thing people should hear about; `taxiops.notify.render` says how it
reads in Slack (Block Kit) and in apprise (title + body). Automations build it from the
JSON their body template renders (`Notice.from_json`); the custom events carry
their facts in the event payload, built from the models of `taxiops.payloads`, so

    taxiops.model.trained   `ModelTrained` here reads `payloads.ModelTrained`
    taxiops.data.rejected   `DataRejected` here reads `payloads.DataRejected`
    taxiops.month.missing   `MonthMissing` here reads `payloads.MonthMissing`

with the same field names (tests hold them equal); these facts are lenient, every field
optional, so a notice with a gap still reaches people.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from taxiops import names
from taxiops.errors import TASK_FAILED_PREFIX, InvalidNoticeError


class NoticeKind(StrEnum):
    """The outcomes people hear about."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CRASHED = "crashed"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    MISSING_MONTH = "missing_month"


# --- facts: one model per kind; their field names are the event payload keys ----------


class _Facts(BaseModel):
    # Every field is optional: a notice with a gap still reaches people.
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_payload(self) -> dict[str, Any]:
        """The facts as a JSON-ready event payload; unset and non-finite values left out."""
        data = self.model_dump(mode="json")
        return {
            key: value
            for key, value in data.items()
            if value is not None and not (isinstance(value, float) and not math.isfinite(value))
        }


class ModelTrained(_Facts):
    """Payload of `taxiops.model.trained`: a challenger was trained and judged.

    The names are those of `taxiops.pipeline.report.TrainingSummary`, whose JSON dump the
    train flow emits; `path` is an optional extra. Metrics are in
    minutes of trip duration on the validation month; `rmse`/`mae` are the challenger's.
    """

    taxi_type: str | None = None
    month: str | None = None
    file: str | None = None
    path: str | None = None
    rows_kept: int | None = None
    train_rows: int | None = None
    val_rows: int | None = None
    model_version: str | None = None
    promoted: bool | None = None
    promotion_reason: str | None = None
    rmse: float | None = None
    mae: float | None = None
    champion_version: str | None = None
    champion_rmse: float | None = None
    champion_mae: float | None = None
    seconds: float | None = None
    champion_own_rmse: float | None = None
    rows_read: int | None = None
    null_shares: dict[str, float] | None = None
    drift_psi: dict[str, float] | None = None
    drifted: list[str] | None = None
    drift_threshold: float | None = None
    production_version: str | None = None
    replaced_version: str | None = None
    model_url: str | None = None


class RunFailure(_Facts):
    """A flow run ended Failed, Crashed or TimedOut (from the flow-run state event)."""

    state: str | None = None
    message: str | None = None
    failed_task: str | None = None
    parameters: dict[str, Any] | None = None


class DataRejected(_Facts):
    """Payload of `taxiops.data.rejected`: a month file broke a data rule."""

    path: str | None = None
    rule: str | None = None
    detail: str | None = None
    quarantined_to: str | None = None
    hint: str | None = None
    taxi_type: str | None = None
    month: str | None = None


class MonthMissing(_Facts):
    """Payload of `taxiops.month.missing`: a taxi type's next month has not arrived."""

    taxi_type: str | None = None
    expected_month: str | None = None
    newest_month: str | None = None
    days_since: int | None = None
    folder: str | None = None


Facts = ModelTrained | RunFailure | DataRejected | MonthMissing

FACTS_BY_KIND: Mapping[NoticeKind, type[Facts]] = {
    NoticeKind.SUCCEEDED: ModelTrained,
    NoticeKind.FAILED: RunFailure,
    NoticeKind.CRASHED: RunFailure,
    NoticeKind.TIMED_OUT: RunFailure,
    NoticeKind.REJECTED: DataRejected,
    NoticeKind.MISSING_MONTH: MonthMissing,
}

# The payload keys each custom event carries; the single source is the models above.
MODEL_TRAINED_KEYS: tuple[str, ...] = tuple(ModelTrained.model_fields)
DATA_REJECTED_KEYS: tuple[str, ...] = tuple(DataRejected.model_fields)
MONTH_MISSING_KEYS: tuple[str, ...] = tuple(MonthMissing.model_fields)

_KIND_BY_EVENT: Mapping[str, NoticeKind] = {
    names.MODEL_TRAINED: NoticeKind.SUCCEEDED,
    names.DATA_REJECTED: NoticeKind.REJECTED,
    names.MONTH_MISSING: NoticeKind.MISSING_MONTH,
}
_KIND_BY_STATE: Mapping[str, NoticeKind] = {
    "failed": NoticeKind.FAILED,
    "crashed": NoticeKind.CRASHED,
    "timedout": NoticeKind.TIMED_OUT,
}
_FLOW_RUN_RESOURCE_PREFIX = "prefect.flow-run."


class Notice(BaseModel):
    """One thing to tell people: its kind, its facts and the flow run it came from."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: NoticeKind
    facts: Facts
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    flow_name: str | None = None
    deployment_name: str | None = None
    ui_url: str | None = None
    occurred: str | None = None
    event_id: str | None = None

    @field_validator("flow_run_id", mode="before")
    @classmethod
    def _normalise_flow_run_id(cls, value: object) -> str | None:
        # Accept a bare id or a resource id `prefect.flow-run.<uuid>`; anything else is dropped.
        if value is None:
            return None
        text = str(value).strip().removeprefix(_FLOW_RUN_RESOURCE_PREFIX)
        try:
            return str(UUID(text))
        except ValueError:
            return None

    @field_validator("ui_url", mode="before")
    @classmethod
    def _normalise_ui_url(cls, value: object) -> str | None:
        return normalise_ui_url(value)

    @model_validator(mode="after")
    def _facts_match_kind(self) -> Notice:
        expected = FACTS_BY_KIND[self.kind]
        if not isinstance(self.facts, expected):
            raise ValueError(f"{self.kind.value} needs {expected.__name__} facts")
        return self

    @property
    def flow_run_url(self) -> str | None:
        """`{ui_url}/runs/flow-run/{flow_run_id}` when both are known."""
        return names.flow_run_url(self.ui_url, self.flow_run_id)

    def with_ui_url(self, ui_url: str | None) -> Notice:
        """This notice, with `ui_url` filled in if it had none."""
        if self.ui_url or not normalise_ui_url(ui_url):
            return self
        return self.model_copy(update={"ui_url": normalise_ui_url(ui_url)})

    @classmethod
    def from_json(cls, text: str) -> Notice:
        """Read a notice from the JSON an automation template rendered.

        Unknown keys are ignored, empty strings count as missing, and keys of a
        nested `payload` (or `facts`) object are read as if they were top-level
        (top-level wins), so `Notice.from_json(notice.model_dump_json())` round-trips.
        `kind` may be left out when `state` or `event` tells it.
        Raises `InvalidNoticeError` when `text` is not such an object.
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidNoticeError(f"not JSON ({exc.__class__.__name__})") from None
        if not isinstance(data, Mapping):
            raise InvalidNoticeError(f"expected a JSON object, got {type(data).__name__}")
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Notice:
        """Like `from_json`, from an already parsed object."""
        flat: dict[str, Any] = {}
        for nested in ("payload", "facts"):  # `facts`: a notice's own `model_dump_json()`
            if isinstance(data.get(nested), Mapping):
                flat.update(_present(data[nested]))
        flat.update(_present({k: v for k, v in data.items() if k not in ("payload", "facts")}))
        kind = _kind_of(flat)
        if "failed_task" not in flat:
            flat.update(_failed_task_from(flat.get("message")))
        facts = _validate_leniently(FACTS_BY_KIND[kind], flat)
        common = {
            key: value if isinstance(value, str) else str(value)
            for key, value in flat.items()
            if key in cls.model_fields and key not in ("kind", "facts")
        }
        return cls.model_validate({**common, "kind": kind, "facts": facts})


def normalise_ui_url(value: object) -> str | None:
    """The Prefect UI base URL without a trailing `/` or `/api`; None unless http(s)."""
    if not isinstance(value, str):
        return None
    url = value.strip().rstrip("/")
    url = url.removesuffix("/api")
    if not url.startswith(("http://", "https://")):
        return None
    return url


def _present(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in data.items() if v is not None and v != ""}


def _kind_of(data: Mapping[str, Any]) -> NoticeKind:
    raw = data.get("kind")
    if raw is not None:
        text = str(raw).strip().lower().replace("-", "_").replace(" ", "_")
        if text == "timedout":
            text = NoticeKind.TIMED_OUT.value
        try:
            return NoticeKind(text)
        except ValueError:
            raise InvalidNoticeError(f"unknown kind {str(raw)[:40]!r}") from None
    state = str(data.get("state", "")).lower().replace("_", "")
    if state in _KIND_BY_STATE:
        return _KIND_BY_STATE[state]
    event = str(data.get("event", ""))
    if event in _KIND_BY_EVENT:
        return _KIND_BY_EVENT[event]
    if event.startswith("prefect.flow-run."):
        state = event.rpartition(".")[2].lower()
        if state in _KIND_BY_STATE:
            return _KIND_BY_STATE[state]
    raise InvalidNoticeError("no `kind`, and neither `state` nor `event` tells it")


_ModelT = TypeVar("_ModelT", bound=BaseModel)


def _validate_leniently(model: type[_ModelT], data: Mapping[str, Any]) -> _ModelT:
    # A field of the wrong type is dropped rather than losing the whole notice.
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in bad})
    except ValidationError as exc:
        raise InvalidNoticeError(f"{model.__name__}: {exc.error_count()} invalid fields") from None


_FAILED_TASK = re.compile(r"\b" + re.escape(TASK_FAILED_PREFIX) + r"(?P<task>[\w.-]+) failed: ")


def _failed_task_from(message: object) -> dict[str, str]:
    """The step named by a `TaskFailedError` message, wherever Prefect wrapped it."""
    match = _FAILED_TASK.search(message) if isinstance(message, str) else None
    return {"failed_task": match["task"]} if match else {}
