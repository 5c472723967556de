"""Thin Prefect tasks over `taxiops.ml` and the registry: retries, cache keys and the
promotion lock, nothing else.

Caching: every task is keyed on the *content* fingerprints of its inputs (see
`taxiops.pipeline.lineage`), its other parameters, and the version of the code that
computes it. A replaced file with the same name therefore misses the cache. The tasks
that read or write the registry's present state (the champion, registration, the
promotion) are never cached.

Retries: only transient faults (I/O, timeouts, lost connections) are retried,
with exponential backoff and jitter; a `DataValidationError` fails at once.
"""

from __future__ import annotations

import errno
import hashlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import httpx
from prefect import Task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

import taxiops
from taxiops import ml, names
from taxiops.errors import TaxiopsError
from taxiops.pipeline.clock import reports_work
from taxiops.pipeline.lineage import MonthBytes, MonthData, TrainedModel, model_key, version_key
from taxiops.registry import (
    ModelCard,
    ModelRegistry,
    ModelVersion,
    Promotion,
    RegistryRef,
    TrainingDataset,
    TrainingRecord,
)
from taxiops.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

# Decoration-time defaults are the settings' defaults; `configured` applies the live values.
_DEFAULT_RETRIES: int = Settings.model_fields["task_retries"].default
_DEFAULT_RETRY_DELAY: float = Settings.model_fields["task_retry_delay_seconds"].default

# A promotion waits this long for another run's decision on the same taxi type.
_LOCK_TIMEOUT_SECONDS = 600.0

_PERMANENT_OS_ERRORS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EISDIR,
    errno.ENOTDIR,
}


# --- retries --------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """Whether retrying could help: I/O hiccups, timeouts, lost connections; never bad data."""
    if isinstance(exc, TaxiopsError | MemoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if _is_mlflow_server_fault(exc) or _is_api_fault(exc):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_OS_ERRORS
    return False


def _is_mlflow_server_fault(exc: BaseException) -> bool:
    """An MLflow error a retry may cure: the store answered 5xx, or not at all (MLflow
    reports a refused connection as an internal error, after its own retries)."""
    exceptions = sys.modules.get("mlflow.exceptions")  # never imported just to ask
    if exceptions is None or not isinstance(exc, exceptions.MlflowException):
        return False
    return int(exc.get_http_status_code()) >= 500


def _is_api_fault(exc: BaseException | None) -> bool:
    """A Prefect API call that a retry may cure: no connection, a timeout, 429 or 5xx
    (SQLite answers a busy server with 503). Looked for along the causes too, as Prefect
    raises `ConcurrencySlotAcquisitionError` from the HTTP error of the promotion lock."""
    while exc is not None:
        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            return status == 429 or status >= 500
        exc = exc.__cause__
    return False


def retry_on_transient_fault(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """`retry_condition_fn` for every taxiops task."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:
            return False
    return isinstance(exc, BaseException) and is_transient(exc)


# --- caching ---------------------------------------------------------------------
@cache
def code_version() -> str:
    """Hash of the code that shapes results: the package version, `ml/`, `registry/`,
    lineage, tasks and tripfile."""
    package = Path(taxiops.__file__).parent
    digest = hashlib.sha256(taxiops.__version__.encode())
    sources = [
        *sorted((package / "ml").glob("*.py")),
        *sorted((package / "registry").glob("*.py")),
        *(package / name for name in ("pipeline/lineage.py", "pipeline/tasks.py", "tripfile.py")),
    ]
    for source in sources:
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _stable(value: Any) -> Any:
    """Replace data-carrying values by their content fingerprints, recursively."""
    fingerprint = getattr(value, "cache_fingerprint", None)
    if isinstance(fingerprint, str):
        return fingerprint
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__qualname__, **_stable(vars(value))}
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class ContentCachePolicy(CachePolicy):
    """Cache key = task name + content fingerprints of the inputs + code version."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return hash_objects(
            task_ctx.task.name, _stable(inputs), code_version(), raise_on_failure=True
        )


CONTENT = ContentCachePolicy()


def configured(task_: Task[P, R], settings: Settings) -> Task[P, R]:
    """The task with this deployment's retries and result storage (under `TAXIOPS_HOME`)."""
    cached = task_.cache_policy is not NO_CACHE
    return task_.with_options(
        retries=settings.task_retries,
        retry_delay_seconds=exponential_backoff(settings.task_retry_delay_seconds)(
            settings.task_retries
        ),
        result_storage=settings.results_dir,
        cache_policy=CONTENT.configure(key_storage=settings.results_dir / "cache-keys")
        if cached
        else NO_CACHE,
    )


def taxiops_task(name: str, *, cache: bool = True) -> Callable[[Callable[P, R]], Task[P, R]]:
    """`@task` with taxiops' cache policy (or none: steps that read or write the registry's
    present state), persisted results and transient-only retries."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return Task(
            fn=reports_work(fn),
            name=name,
            cache_policy=CONTENT if cache else NO_CACHE,
            persist_result=cache,  # a result never read from cache is not kept either
            retries=_DEFAULT_RETRIES,
            retry_delay_seconds=exponential_backoff(_DEFAULT_RETRY_DELAY)(_DEFAULT_RETRIES),
            retry_jitter_factor=0.5,
            retry_condition_fn=retry_on_transient_fault,
        )

    return decorate


# --- the tasks ---------------------------------------------------------------------
@taxiops_task("load-month")
def load_month(
    content: MonthBytes,
    max_rows: int,
    min_minutes: float,
    max_minutes: float,
    max_outside_month_share: float,
) -> MonthData:
    """Validate and prepare a month from the bytes the run read (never the file again, so
    what is trained is what was fingerprinted)."""
    trips = ml.load_trips(
        content.file.trip,
        data=content.data,
        max_rows=max_rows,
        min_minutes=min_minutes,
        max_minutes=max_minutes,
        max_outside_month_share=max_outside_month_share,
    )
    rules = f"rows-{max_rows}:{min_minutes}-{max_minutes}:outside-{max_outside_month_share}"
    return MonthData(file=content.file, trips=trips, part="all", rules=rules)


@taxiops_task("check-drift")
def check_drift(
    train_months: list[MonthData], month: MonthData, threshold: float
) -> ml.DriftReport:
    """PSI of `month`'s features against the training months' (`taxiops.ml.drift`)."""
    return ml.compare_months([m.trips.frame for m in train_months], month.trips.frame, threshold)


@taxiops_task("split-by-pickup-time")
def split_month(month: MonthData, validation_fraction: float) -> tuple[MonthData, MonthData]:
    """Split a month by pickup day: the last days validate, the rest train."""
    train, validation = ml.split_by_pickup_time(month.trips, validation_fraction)
    rules = f"{month.rules}:split-{validation_fraction}"
    return (
        MonthData(file=month.file, trips=train, part="train", rules=rules),
        MonthData(file=month.file, trips=validation, part="validation", rules=rules),
    )


@taxiops_task("train-challenger")
def train_challenger(months: list[MonthData], params: ml.TrainingParams) -> TrainedModel:
    """Train a challenger on the given months."""
    model = ml.train_model([m.trips.frame for m in months], params)
    return TrainedModel(
        model=model,
        params=params,
        months=tuple(m.label for m in months),
        data_sha256={m.file.trip.name: m.file.sha256 for m in months},
        train_rows=sum(
            m.trips.report.rows_kept if m.part == "all" else len(m.trips.frame) for m in months
        ),
        model_key=model_key(months, params, code_version()),
    )


@taxiops_task("evaluate-challenger")
def evaluate_challenger(challenger: TrainedModel, month: MonthData) -> ml.Metrics:
    """RMSE and MAE of the challenger on the validation month."""
    return ml.evaluate(challenger.model, month.trips.frame)


@taxiops_task("plot-predictions")
def plot_predictions(challenger: TrainedModel, month: MonthData) -> str:
    """The challenger's predicted against actual minutes on the month, as an SVG document."""
    from taxiops.ml.schema import DURATION

    frame = month.trips.frame
    predicted = challenger.model.predict(frame)
    return ml.predicted_vs_actual_svg(frame[DURATION], predicted)


@taxiops_task("open-registry", cache=False)
def open_registry(tracking_uri: str, artifact_root: Path | None) -> RegistryRef:
    """The MLflow store as a task input (its experiment made on first use)."""
    return ModelRegistry(tracking_uri, artifact_root).ref()


@taxiops_task("read-champion", cache=False)
def read_champion(registry: RegistryRef, taxi_type: str) -> ModelVersion | None:
    """The version in production as the run begins (None before the first promotion)."""
    return ModelRegistry.of(registry).production(taxi_type)


@taxiops_task("register-challenger", cache=False)
def register_challenger(
    registry: RegistryRef,
    challenger: TrainedModel,
    metrics: ml.Metrics,
    train_months: list[MonthData],
    validation: MonthData,
    chart_svg: str | None,
    run_tags: dict[str, str],
) -> ModelVersion:
    """Log the challenger as an MLflow run and register it as a version (idempotent by the
    key of its training and validation data). Never cached: the store is the truth."""
    from taxiops.ml.schema import trip_columns

    trip = validation.file.trip
    card = ModelCard(
        taxi_type=trip.taxi_type,
        model_key=version_key(challenger.model_key, validation),
        training_key=challenger.model_key,
        validation_month=validation.label,
        train_months=list(challenger.months),
        data_sha256={**challenger.data_sha256, trip.name: validation.file.sha256},
        params=challenger.params.as_dict(),
        code_version=code_version(),
        metrics={"rmse": metrics.rmse, "mae": metrics.mae},
        train_rows=challenger.train_rows,
        val_rows=metrics.rows,
    )
    record = TrainingRecord(
        card=card,
        params={
            **{key: str(value) for key, value in card.params.items()},
            "train_months": ", ".join(card.train_months),
            "validation_month": card.validation_month,
            "data_rules": validation.rules,
        },
        tags={
            **run_tags,
            "taxi_type": trip.taxi_type,
            "validation_month": card.validation_month,
            "code_version": card.code_version,
            **{f"sha256.{name}": digest for name, digest in card.data_sha256.items()},
        },
        datasets=[
            *(_dataset(month, "training") for month in train_months),
            _dataset(validation, "validation"),
        ],
        pickup_column=trip_columns(trip.taxi_type).pickup,
        chart_svg=chart_svg,
    )
    return ModelRegistry.of(registry).register(challenger.model, record)


def _dataset(month: MonthData, context: Literal["training", "validation"]) -> TrainingDataset:
    return TrainingDataset(
        name=f"{month.file.trip.name}" + ("" if month.part == "all" else f" ({month.part})"),
        sha256=month.file.sha256,
        source=str(month.file.path),
        frame=month.trips.frame,
        context=context,
    )


@dataclass(frozen=True)
class ChampionScore:
    """The champion a challenger was judged against, and its score on the same month."""

    version: ModelVersion | None
    metrics: ml.Metrics | None


@taxiops_task("evaluate-champion")
def evaluate_champion(
    registry: RegistryRef,
    champion: ModelVersion | None,
    month: MonthData,
    challenger: ModelVersion,
    challenger_metrics: ml.Metrics,
) -> ChampionScore:
    """Score the production model on the challenger's validation month; when production is
    the challenger itself (the same bytes again), its score is the challenger's."""
    if champion is None:
        return ChampionScore(version=None, metrics=None)
    if champion.number == challenger.number:
        return ChampionScore(version=champion, metrics=challenger_metrics)
    model = ModelRegistry.of(registry).load_model(champion)
    return ChampionScore(version=champion, metrics=ml.evaluate(model, month.trips.frame))


@taxiops_task("promote-if-better", cache=False)
def promote_if_better(
    registry: RegistryRef,
    challenger: ModelVersion,
    metrics: ml.Metrics,
    champion: ChampionScore,
    month: MonthData,
    decided_by: str,
) -> Promotion:
    """Promote the challenger if the registry's rule says it beats production on `month`,
    under the taxi type's Prefect concurrency limit. Never cached: it decides on the
    production of now."""
    models = ModelRegistry.of(registry)

    def rescore(version: ModelVersion) -> ml.Metrics:
        return ml.evaluate(models.load_model(version), month.trips.frame)

    return models.promote_if_better(
        challenger,
        metrics,
        champion=champion.version,
        champion_metrics=champion.metrics,
        rescore=rescore,
        lock=promotion_lock,
        decided_by=decided_by,
    )


@taxiops_task("record-outcome", cache=False)
def record_outcome(
    registry: RegistryRef,
    version: ModelVersion,
    seconds: float,
    pipeline_seconds: float,
    promotion: Promotion,
    champion: ChampionScore,
) -> None:
    """Log the flow's and the pipeline's wall times, the verdict and the champion's RMSE on
    the month to the challenger's run."""
    ModelRegistry.of(registry).record_outcome(
        version,
        {"flow_seconds": seconds, "pipeline_seconds": pipeline_seconds},
        {
            "promoted": str(promotion.promoted).lower(),
            "promotion_reason": promotion.reason[:4000],
            "production_after": promotion.production or "none",
        },
        champion_rmse=None if champion.metrics is None else champion.metrics.rmse,
    )


@taxiops_task("plot-rmse-history", cache=False)
def plot_rmse_history(registry: RegistryRef, version: ModelVersion) -> str:
    """RMSE by month of the taxi type's recent challengers and of production on the same
    months, as an SVG document, also logged to `version`'s run. Never cached: it draws the
    registry of now."""
    models = ModelRegistry.of(registry)
    history = models.rmse_history(version.taxi_type)
    svg = ml.rmse_by_month_svg(
        [f"{point.month} {point.version}" for point in history],
        [point.rmse for point in history],
        [point.champion_rmse for point in history],
        [point.promoted for point in history],
        title=f"{version.taxi_type}: RMSE by month",
    )
    models.log_chart(version, svg, names.RMSE_CHART_ARTIFACT)
    return svg


@contextmanager
def promotion_lock(taxi_type: str) -> Iterator[None]:
    """One promotion decision at a time per taxi type, wherever its runs execute: a Prefect
    global concurrency limit of 1, created on first use."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"{names.PROMOTION_LOCK_PREFIX}{taxi_type}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # created meanwhile by another run
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    with concurrency(name, occupy=1, strict=True, timeout_seconds=_LOCK_TIMEOUT_SECONDS):
        yield
