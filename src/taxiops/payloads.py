"""The payload of each taxiops event, as a model: emitters build one and send
`.model_dump(mode="json")`; the notice side (`taxiops.notify.messages`) reads the same
field names.

    taxiops.data.arrived    DataArrived     the watcher handed a month file to a run
    taxiops.data.rejected   DataRejected    a month file broke a data rule
    taxiops.model.trained   ModelTrained    a challenger was trained and judged
    taxiops.month.missing   MonthMissing    the monthly retrain found no file for a month
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from taxiops import names


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataArrived(_Payload):
    """A month file was admitted and handed to the training deployment."""

    path: str
    taxi_type: str
    month: str
    sha256: str
    size: int
    flow_run_id: str | None = None


class DataRejected(_Payload):
    """A month file broke a data rule, whether the watcher or a flow run refused it."""

    path: str
    rule: str
    detail: str
    quarantined_to: str | None
    hint: str | None
    taxi_type: str | None = None
    month: str | None = None

    @classmethod
    def for_file(
        cls,
        path: str,
        rule: str,
        detail: str,
        hint: str | None,
        quarantined_to: str | None,
    ) -> DataRejected:
        """The payload for `path`; the taxi type and month are filled in when its name says them."""
        from taxiops.tripfile import FILE_NAME_PATTERN

        named = FILE_NAME_PATTERN.match(path.replace("\\", "/").rsplit("/", 1)[-1])
        return cls(
            path=path,
            rule=rule,
            detail=detail,
            hint=hint,
            quarantined_to=quarantined_to,
            taxi_type=named["type"] if named else None,
            month=f"{named['year']}-{named['month']}" if named else None,
        )


class ModelTrained(_Payload):
    """A training run's outcome: the fields alerts read, from `TrainingSummary` (whose other
    fields travel along too). Metrics are minutes of trip duration on the validation month."""

    model_config = ConfigDict(frozen=True, extra="allow")

    taxi_type: str
    month: str
    file: str
    train_rows: int
    val_rows: int
    model_version: str
    promoted: bool
    promotion_reason: str
    rmse: float
    mae: float
    champion_version: str | None
    champion_rmse: float | None
    champion_mae: float | None
    seconds: float
    champion_own_rmse: float | None = None
    rows_read: int | None = None
    rows_kept: int | None = None
    null_shares: dict[str, float] = {}
    drift_psi: dict[str, float] = {}
    drifted: list[str] = []
    drift_threshold: float | None = None
    production_version: str | None = None
    replaced_version: str | None = None
    model_url: str | None = None


class DataDrift(_Payload):
    """A new month's features drifted from the training months': PSI per feature, and the
    features at or past the threshold, most drifted first. The names are those of
    `TrainingSummary`, which it is built from."""

    taxi_type: str
    month: str
    file: str
    train_months: list[str]
    drift_psi: dict[str, float]
    drifted: list[str]
    drift_threshold: float
    flow_run_id: str | None


class MonthMissing(_Payload):
    """A taxi type's expected month has not arrived; `days_since` counts the days since its
    newest file arrived (None when it has none)."""

    taxi_type: str
    expected_month: str
    newest_month: str | None
    days_since: int | None
    folder: str


PAYLOAD_BY_EVENT: Mapping[str, type[_Payload]] = {
    names.DATA_ARRIVED: DataArrived,
    names.DATA_REJECTED: DataRejected,
    names.DATA_DRIFT: DataDrift,
    names.MODEL_TRAINED: ModelTrained,
    names.MONTH_MISSING: MonthMissing,
}
"""The payload model of each taxiops event."""
