"""The training flow: a month file in, a challenger trained, judged and maybe promoted.

Orchestration only: every step is a task in `taxiops.pipeline.tasks`; the ML lives in
`taxiops.ml` and the registry (MLflow) in `taxiops.registry`.

Each month file is read once: the bytes hashed are the bytes trained on, so the
summary, the model card and the ledger name only bytes the model really saw.

A file that breaks a data rule ends the run in a Failed state named "Rejected";
when the file lies in the incoming folder it is moved to the quarantine folder
beside it (with a reason file), and one `taxiops.data.rejected` event says so.
A file replaced on disk since the run read it is neither moved nor alerted on: its
newer bytes are trained in a run of their own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, overload
from uuid import UUID, uuid5

from prefect import Task, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import Failed

from taxiops import ml, names
from taxiops.errors import DataValidationError, TaskFailedError, ValidationRule
from taxiops.intake.quarantine import QuarantinedFile, quarantine
from taxiops.payloads import DataDrift, DataRejected, ModelTrained
from taxiops.pipeline import tasks
from taxiops.pipeline.clock import WorkClock
from taxiops.pipeline.lineage import FingerprintedFile, MonthBytes, MonthData
from taxiops.pipeline.report import MonthRows, TrainingSummary, registry_table, render_markdown
from taxiops.registry import ModelRegistry, ModelVersion, sign_in
from taxiops.settings import Settings, load_settings
from taxiops.tripfile import earlier_months_in_folder, sha256_of

P = ParamSpec("P")
R = TypeVar("R")

# Rejection event ids derive from run and file, so a re-sent event is stored once.
_REJECTION_NAMESPACE = UUID("0f9b6a44-7d7c-4b51-9a59-3f3c2d1e8a10")


class _Steps:
    """Runs configured tasks and keeps their final states, to count cache hits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.states: list[State[Any]] = []
        self.work = WorkClock()  # `pipeline_seconds`

    def run(self, task_: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """The task's value; bad data re-raised, any other failure a `TaskFailedError`."""
        state = tasks.configured(task_, self.settings)(*args, return_state=True, **kwargs)
        return self._result(task_.name, state)

    def run_all(
        self, task_: Task[..., R], calls: list[tuple[Any, ...]]
    ) -> list[R | DataValidationError]:
        """Run the calls concurrently; a call that found bad data yields its
        `DataValidationError` instead of a value (the caller decides)."""
        futures = [tasks.configured(task_, self.settings).submit(*args) for args in calls]
        for future in futures:
            future.wait()
        return [
            self._result(task_.name, future.state, bad_data_is_value=True) for future in futures
        ]

    @overload
    def _result(self, name: str, state: State[R]) -> R: ...
    @overload
    def _result(
        self, name: str, state: State[R], *, bad_data_is_value: Literal[True]
    ) -> R | DataValidationError: ...
    def _result(
        self, name: str, state: State[R], *, bad_data_is_value: bool = False
    ) -> R | DataValidationError:
        """The task's value; bad data re-raised as is (or returned), any other failure named
        by its task."""
        self.states.append(state)
        if not state.is_failed():
            return state.result()
        error = state.result(raise_on_failure=False)
        if isinstance(error, DataValidationError):
            if bad_data_is_value:
                return error
            raise error
        if not isinstance(error, BaseException):
            raise TaskFailedError(name, str(state.message))
        raise TaskFailedError(name, f"{type(error).__name__}: {error}") from error

    @property
    def cached(self) -> int:
        return sum(1 for state in self.states if state.name == "Cached")


@flow(name=names.TRAIN_FLOW, log_prints=True)
def train_duration_model(
    new_file: str,
    train_files: list[str] | None = None,
    expected_sha256: str | None = None,
) -> TrainingSummary:
    """Train a challenger for `new_file`'s taxi type, evaluate it on `new_file`'s month,
    and promote it when it is no worse than production on that month.

    `train_files` names the training months; without it, the `TAXIOPS_TRAIN_MONTHS`
    months before `new_file` in its folder are used, or, when there are none, the
    first 80% of `new_file`'s days.
    """
    started = time.perf_counter()
    settings = load_settings()
    sign_in(settings)  # a team's tracking server wants the team's credentials
    logger = get_run_logger()
    read: list[FingerprintedFile] = []
    steps = _Steps(settings)
    try:
        with steps.work.timing():
            contents = _read_months(settings, new_file, train_files, expected_sha256, read)
        # `_train` empties `contents` once they are parsed, to let go of the bytes.
        summary = _train(steps, contents, started, skip_bad_sources=train_files is None)
    except DataValidationError as exc:
        # A Failed state named "Rejected": the UI and the `prefect.flow-run.Rejected`
        # event say what happened, and the generic failure alert stays quiet.
        sha256 = next((f.sha256 for f in read if f.path == exc.path), None)
        message = _reject(settings, exc, sha256)
        _EngineRejectionTraceback.silence()
        return Failed(name=names.REJECTED_STATE, message=message, data=exc)  # type: ignore[return-value]
    logger.info(
        "%s %s: challenger %s RMSE %.3f (champion %s) -> %s",
        summary.taxi_type,
        summary.month,
        summary.model_version,
        summary.rmse,
        "none" if summary.champion_rmse is None else f"{summary.champion_rmse:.3f}",
        summary.promotion_reason,
    )
    return summary


def _read_months(
    settings: Settings,
    new_file: str,
    train_files: list[str] | None,
    expected_sha256: str | None,
    read: list[FingerprintedFile],
) -> list[MonthBytes]:
    """The bytes of the training months and, last, of `new_file`, each read once.

    Bytes of `new_file` other than the `expected_sha256` the watcher recorded are refused
    as `file-changed`: the watcher records the newer bytes and hands them off on their own.
    """
    target = _read(settings, new_file, read)
    if expected_sha256 is not None and target.file.sha256 != expected_sha256:
        raise DataValidationError(
            target.file.path,
            ValidationRule.FILE_CHANGED,
            f"bytes changed after arrival (sha256 {expected_sha256[:12]} -> "
            f"{target.file.sha256[:12]})",
        )
    if train_files is not None:
        sources = [_read(settings, p, read) for p in train_files]
    else:
        sources = _earlier_months(settings, target.file, read)
    return [*sources, target]


class _EngineRejectionTraceback(logging.Filter):
    """Drops the traceback Prefect logs after a run that ended Rejected.

    Prefect 3.9's `run_flow` (flow_engine.py), run for a deployment as `python -m
    prefect.flow_engine`, returns `engine.result()`, which raises the exception of any
    Failed final state, ours included, and logs "Engine execution exited with unexpected
    exception" with its traceback to the flow-run logger before the process exits 0. No
    Failed state avoids that, and a non-Failed state would tell the ledger and the alerts
    the month trained. The rejection itself is logged and alerted on once already.
    """

    MESSAGE = "Engine execution exited with unexpected exception"

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.msg == self.MESSAGE and isinstance(error, DataValidationError))

    @classmethod
    def silence(cls) -> None:
        logger = logging.getLogger("prefect.flow_runs")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


def _train(
    steps: _Steps,
    contents: list[MonthBytes],
    started: float,
    *,
    skip_bad_sources: bool,
) -> TrainingSummary:
    """Load, train, judge, register; `contents` are the training months' bytes and, last,
    the new month's (emptied once parsed, to free them). With `skip_bad_sources`, a bad
    earlier month found in the folder is left out (its own run rejects and quarantines it)
    instead of failing the new month; training months named by the caller must all be good."""
    settings = steps.settings
    target = contents[-1].file
    rules = (
        settings.max_file_rows,
        settings.min_duration_minutes,
        settings.max_duration_minutes,
        settings.max_outside_month_share,
    )
    with steps.work.counting():
        *from_sources, validation = steps.run_all(
            tasks.load_month, [(content, *rules) for content in contents]
        )
    contents.clear()
    if isinstance(validation, DataValidationError):
        raise validation
    train_months: list[MonthData] = []
    for loaded_month in from_sources:
        if not isinstance(loaded_month, DataValidationError):
            train_months.append(loaded_month)
        elif skip_bad_sources:
            get_run_logger().warning(
                "training without %s, which breaks a data rule (its own run rejects it): %s",
                loaded_month.path.name,
                loaded_month,
            )
        else:
            raise loaded_month
    loaded = [*train_months, validation]
    if not train_months:
        with steps.work.counting():
            train_part, validation = steps.run(
                tasks.split_month, validation, settings.validation_fraction
            )
        train_months = [train_part]

    registry = steps.run(tasks.open_registry, settings.tracking_uri, settings.mlflow_artifacts_dir)
    taxi_type = target.trip.taxi_type
    production = steps.run(tasks.read_champion, registry, taxi_type)
    drift = steps.run(tasks.check_drift, train_months, validation, settings.drift_psi_threshold)
    with steps.work.counting():
        challenger = steps.run(tasks.train_challenger, train_months, ml.TrainingParams())
        metrics: ml.Metrics = steps.run(tasks.evaluate_challenger, challenger, validation)
    chart = steps.run(tasks.plot_predictions, challenger, validation)
    run_id = str(flow_run.get_id() or "")
    version = steps.run(
        tasks.register_challenger,
        registry,
        challenger,
        metrics,
        train_months,
        validation,
        chart,
        {
            "prefect.flow_run_id": run_id,
            "prefect.flow_run_url": names.flow_run_url(get_current_settings().ui_url, run_id) or "",
        },
    )
    champion = steps.run(
        tasks.evaluate_champion, registry, production, validation, version, metrics
    )
    promotion = steps.run(
        tasks.promote_if_better, registry, version, metrics, champion, validation, run_id
    )

    new_month = loaded[-1].trips.report
    summary = TrainingSummary(
        taxi_type=target.trip.taxi_type,
        month=str(target.trip.month),
        file=target.trip.name,
        train_months=[m.label for m in train_months],
        rmse=metrics.rmse,
        mae=metrics.mae,
        train_rows=challenger.train_rows,
        val_rows=metrics.rows,
        model_version=version.name,
        promoted=promotion.promoted,
        promotion_reason=promotion.reason,
        production_version=promotion.production,
        replaced_version=promotion.replaced,
        model_url=_version_url(settings, version),
        mlflow_run_id=version.run_id,
        champion_version=None if champion.version is None else champion.version.name,
        champion_rmse=None if champion.metrics is None else champion.metrics.rmse,
        champion_mae=None if champion.metrics is None else champion.metrics.mae,
        champion_own_rmse=None
        if champion.version is None
        else champion.version.card.metrics["rmse"],
        rows_read=new_month.rows_read,
        rows_kept=new_month.rows_kept,
        null_shares={name: round(share, 6) for name, share in new_month.null_shares.items()},
        drift_psi=drift.psi,
        drifted=drift.drifted,
        drift_threshold=drift.threshold,
        seconds=0.0,
        flow_run_id=flow_run.get_id(),
        cached_tasks=steps.cached,
        total_tasks=len(steps.states),
        months=[_month_rows(m) for m in loaded],
    )
    summary = summary.model_copy(
        update={
            "seconds": round(time.perf_counter() - started, 3),
            "pipeline_seconds": round(steps.work.seconds, 3),
        }
    )
    steps.run(
        tasks.record_outcome,
        registry,
        version,
        summary.seconds,
        summary.pipeline_seconds,
        promotion,
        champion,
    )
    history = steps.run(tasks.plot_rmse_history, registry, version)
    _publish(settings, summary, chart, history)
    return summary


def _version_url(settings: Settings, version: ModelVersion) -> str | None:
    """The MLflow UI page of a model version, when a UI is known."""
    ui = settings.mlflow_ui_url
    return None if ui is None else f"{ui}/#/models/{version.model_name}/versions/{version.number}"


def _month_rows(month: MonthData) -> MonthRows:
    report = month.trips.report
    return MonthRows(
        month=str(month.file.trip.month),
        file=month.file.trip.name,
        sha256=month.file.sha256,
        rows_read=report.rows_read,
        rows_kept=report.rows_kept,
        dropped=dict(report.dropped),
    )


def _publish(
    settings: Settings, summary: TrainingSummary, chart_svg: str, history_svg: str
) -> None:
    """Artifacts for the UI and the `taxiops.model.trained` event for automations."""
    from taxiops.ml.plots import svg_data_uri

    create_markdown_artifact(
        markdown=render_markdown(summary, svg_data_uri(chart_svg), svg_data_uri(history_svg)),
        key=names.REPORT_ARTIFACT,
        description=f"{summary.taxi_type} {summary.month} training report",
    )
    create_table_artifact(
        table=registry_table(ModelRegistry.from_settings(settings), summary.taxi_type),
        key=f"{names.REGISTRY_ARTIFACT}-{summary.taxi_type}",
        description=f"{summary.taxi_type} model registry",
    )
    emit_event(
        event=names.MODEL_TRAINED,
        resource=names.month_resource(summary.taxi_type, summary.month, summary.file),
        payload=ModelTrained.model_validate(summary.model_dump(exclude={"months"})).model_dump(
            mode="json"
        ),
    )
    if summary.drifted:
        get_run_logger().warning(
            "%s %s drifted from %s: %s",
            summary.taxi_type,
            summary.month,
            ", ".join(summary.train_months),
            ", ".join(f"{name} (PSI {summary.drift_psi[name]:.3f})" for name in summary.drifted),
        )
        emit_event(
            event=names.DATA_DRIFT,
            resource=names.month_resource(summary.taxi_type, summary.month, summary.file),
            payload=DataDrift.model_validate(
                summary.model_dump(include=set(DataDrift.model_fields))
            ).model_dump(mode="json"),
        )


def _read(settings: Settings, path: str | Path, read: list[FingerprintedFile]) -> MonthBytes:
    """Read and hash a month file once (its fingerprint remembered in `read`); a file gone
    since the hand-off is rejected."""
    try:
        content = MonthBytes.read(path, max_bytes=settings.max_file_bytes)
    except FileNotFoundError:
        gone = Path(path)
        raise DataValidationError(
            gone,
            ValidationRule.FILE_VANISHED,
            f"no such file in {gone.parent}; it was removed or moved before this run read it",
        ) from None
    read.append(content.file)
    return content


def _earlier_months(
    settings: Settings, target: FingerprintedFile, read: list[FingerprintedFile]
) -> list[MonthBytes]:
    """The earlier months beside `target`; one gone since the folder was listed (its own
    run quarantined it, say), or too large, is left out rather than blamed on the new month."""
    found = []
    for earlier in earlier_months_in_folder(target.trip, settings.train_months):
        try:
            found.append(_read(settings, earlier.path, read))
        except DataValidationError as exc:
            get_run_logger().warning("training without %s: %s", earlier.name, exc)
    return found


def _reject(settings: Settings, exc: DataValidationError, sha256: str | None) -> str:
    """Quarantine the file when it is ours to move, log and announce the rejection once;
    returns the message for the run's final state. Bytes replaced since the run read them
    are no one's fault now: nothing is moved or announced, the newer bytes get their own run."""
    logger = get_run_logger()
    in_folder = _in_folder(exc.path, settings.incoming_dir)
    if exc.rule is ValidationRule.FILE_CHANGED:
        logger.warning("%s; newer bytes are being trained", exc)
        return str(exc)
    if _holds_other_bytes(exc.path, sha256):
        then = "the watcher trains them in a run of their own" if in_folder else "train them anew"
        message = f"{exc}; the file now holds newer bytes ({then}), so it stays where it is"
        logger.warning("rejected the bytes this run read (sha256 %.12s): %s", sha256, message)
        return message
    moved: QuarantinedFile | None = None
    if exc.rule.keeps_file and in_folder:
        try:
            moved = quarantine(
                exc, settings.quarantine_dir, by=f"flow run {flow_run.get_id()}", sha256=sha256
            )
        except OSError as error:
            logger.error(
                "could not quarantine %s into %s (%s); it stays where it is",
                exc.path,
                settings.quarantine_dir,
                error,
            )
    message = str(exc) if moved is None else f"{exc}; moved to {moved.path}"
    logger.error("rejected %s", message)
    _announce_rejection(exc, moved)
    return message


def _holds_other_bytes(path: Path, sha256: str | None) -> bool:
    """Whether a file is at `path` with other bytes than the run read (`sha256`): replaced
    meanwhile (fixed, say), so not to be quarantined for its predecessor's faults."""
    if sha256 is None:
        return False  # never read as bytes (a bad name, say): nothing newer to protect
    try:
        return sha256_of(path) != sha256
    except OSError:
        return False  # gone: nothing to protect


def _in_folder(path: Path, folder: Path) -> bool:
    """Whether `path` lies directly in `folder` (never move a file the service was not given)."""
    try:
        return path.parent.resolve() == folder.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _announce_rejection(exc: DataValidationError, moved: QuarantinedFile | None) -> None:
    """Tell automations a file broke a data rule: one event per run and file (a stable id,
    so a re-sent event is stored, and alerted on, once)."""
    run_id = flow_run.get_id()
    emit_event(
        event=names.DATA_REJECTED,
        resource=names.file_resource(exc.path.name),
        payload=DataRejected.for_file(
            str(exc.path),
            exc.rule.value,
            exc.detail,
            exc.hint,
            None if moved is None else str(moved.path),
        ).model_dump(mode="json"),
        id=None if run_id is None else uuid5(_REJECTION_NAMESPACE, f"{run_id}:{exc.path}"),
    )
