"""The monthly retrain: on a cron schedule, retrain each taxi type on its newest month,
or fail loudly when the month expected by now has not arrived."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.states import Failed

from taxiops import names
from taxiops.errors import MissingMonthError, TaxiopsError
from taxiops.payloads import MonthMissing
from taxiops.pipeline.entrypoints import TRAIN_ENTRYPOINT, load_flow
from taxiops.pipeline.report import TrainingSummary
from taxiops.pipeline.schedule import RetrainPlan, plan_retrain
from taxiops.settings import load_settings
from taxiops.tripfile import TaxiType


@flow(name=names.RETRAIN_FLOW)
def monthly_retrain(
    taxi_types: list[TaxiType] | None = None,
    today: date | None = None,
) -> list[TrainingSummary]:
    """Retrain every taxi type on its newest month in the incoming folder.

    Fails with a "missing month" error naming each taxi type whose expected month
    (`TAXIOPS_PUBLICATION_LAG_MONTHS` before `today`) is absent, after retraining
    the others, so old data is never silently retrained as if it were new.
    """
    settings = load_settings()
    logger = get_run_logger()
    run_day = today or datetime.now(ZoneInfo(settings.schedule_timezone)).date()
    plans = plan_retrain(
        settings.incoming_dir,
        taxi_types or settings.retrain_taxi_types,
        run_day,
        settings.publication_lag_months,
    )
    # Loaded by path, like prefect.yaml does, so this works from any working directory.
    train_duration_model = load_flow(TRAIN_ENTRYPOINT)
    summaries: list[TrainingSummary] = []
    missing: list[RetrainPlan] = []
    failed: list[str] = []
    rejected: list[str] = []
    for plan in plans:
        if plan.missing:
            missing.append(plan)
            _announce_missing(
                plan, settings.incoming_dir, run_day, ZoneInfo(settings.schedule_timezone)
            )
            continue
        assert plan.newest is not None
        logger.info("retraining %s on %s", plan.taxi_type, plan.newest.name)
        # One taxi type's rejected or failed month must not stop the others; the subflow's
        # own state (and alert) says what went wrong with it.
        state = cast(
            "State[TrainingSummary]",
            train_duration_model(new_file=str(plan.newest.path), return_state=True),
        )
        if state.is_completed():
            summaries.append(state.result())
        elif state.name == names.REJECTED_STATE:
            rejected.append(f"{plan.taxi_type}: {state.message}")
        else:
            failed.append(f"{plan.taxi_type}: {state.message}")
    if missing:
        error = MissingMonthError(
            ", ".join(p.taxi_type for p in missing),
            ", ".join(sorted({str(p.expected) for p in missing})),
            settings.incoming_dir,
        )
        logger.error(str(error))
        # A Failed state named "MissingMonth": the month-missing alert speaks for it,
        # the generic failure alert stays quiet.
        return Failed(name=names.MISSING_MONTH_STATE, message=str(error), data=error)  # type: ignore[return-value]
    if failed:
        raise RetrainFailedError(failed + rejected)
    if rejected:
        # The rejected month's own run has alerted once (`taxiops.data.rejected`); a plain
        # Failed here would alert a second time through the generic failure automation.
        rejection = RetrainFailedError(rejected)
        logger.error(str(rejection))
        return Failed(name=names.REJECTED_STATE, message=str(rejection), data=rejection)  # type: ignore[return-value]
    return summaries


class RetrainFailedError(TaxiopsError):
    """Some taxi types could not be retrained; their own runs say why."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        super().__init__("retraining failed for " + "; ".join(failures))


def _days_since_arrival(plan: RetrainPlan, run_day: date, zone: ZoneInfo) -> int | None:
    """Days from the newest file's arrival (its modification time, as a day in `zone`, the
    schedule's) to `run_day`; None when there is no such file."""
    if plan.newest is None:
        return None
    try:
        arrived = datetime.fromtimestamp(plan.newest.path.stat().st_mtime, zone).date()
    except OSError:
        return None
    return max(0, (run_day - arrived).days)


def _announce_missing(plan: RetrainPlan, folder: Any, run_day: date, zone: ZoneInfo) -> None:
    emit_event(
        event=names.MONTH_MISSING,
        resource={
            "prefect.resource.id": names.taxi_type_resource_id(plan.taxi_type),
            "prefect.resource.name": plan.taxi_type,
        },
        payload=MonthMissing(
            taxi_type=plan.taxi_type,
            expected_month=str(plan.expected),
            newest_month=None if plan.newest is None else str(plan.newest.month),
            days_since=_days_since_arrival(plan, run_day, zone),
            folder=str(folder),
        ).model_dump(mode="json"),
    )
