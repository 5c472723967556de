"""The model registry in MLflow: a run per training, a version per challenger, the
`champion` alias on production.

Each taxi type has a registered model `taxi-duration-<type>`. A challenger is an MLflow
run (params, metrics, tags, input datasets, the model as a pyfunc that loads without
taxiops, see `pyfunc_model`) and a version of that model whose tags carry its card. The
alias `champion` marks production; the version promoted records the version it replaced.

Writes are idempotent: registering the same training judged on the same bytes again
returns the first version (found by its `taxiops.version_key` tag), and a promotion
retried after a fault finds its own earlier decision. Only a finished run becomes a
version, and a version is promoted only once it is READY, so a half-registered model
never serves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from taxiops.errors import RegistryError
from taxiops.registry._rules import judge
from taxiops.settings import store_scheme

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion as MlflowModelVersion

    from taxiops.ml import DurationModel, Metrics
    from taxiops.settings import Settings


def sign_in(settings: Settings) -> None:
    """Send a tracking server the team's credentials (`PREFECT_API_AUTH_STRING`, which
    `taxiops server` makes MLflow's admin) from now on in this process, unless MLflow's own
    `MLFLOW_TRACKING_USERNAME` is set. MLflow reads them from the environment (never argv)
    and only sends them to http(s) stores."""
    if (
        settings.credentials is not None
        and store_scheme(settings.tracking_uri) in ("http", "https")
        and "MLFLOW_TRACKING_USERNAME" not in os.environ
    ):
        user, password = settings.credentials
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password


#: The registered model of a taxi type is `taxi-duration-<type>`.
MODEL_NAME_PREFIX = "taxi-duration-"
#: The alias of the production version.
CHAMPION_ALIAS = "champion"
#: The MLflow experiment of every training run.
EXPERIMENT_NAME = "taxi-duration"

_TAG = "taxiops."
_STORE_ID_TAG = _TAG + "store_id"
_VERSION_KEY_TAG = _TAG + "version_key"
_MODEL_URI_TAG = _TAG + "model_uri"
_MODEL_ID_TAG = _TAG + "model_id"
_CARD_TAG = _TAG + "card"
_PROMOTION_TAG = _TAG + "promotion"
_CHAMPION_RMSE_METRIC = "champion_rmse"
_SCHEMA_ROWS = 1_000  # rows a dataset's schema is read from
_READY_TIMEOUT_SECONDS = 300.0
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

Scorer = Callable[["ModelVersion"], "Metrics"]
Lock = Callable[[str], AbstractContextManager[None]]


def model_name(taxi_type: str) -> str:
    """The registered model of a taxi type."""
    return f"{MODEL_NAME_PREFIX}{taxi_type}"


@dataclass(frozen=True)
class RegistryRef:
    """A registry as a task input: its identity is in cache keys, so results cached against
    a tracking store that was since deleted or replaced are not served for the new one."""

    tracking_uri: str = field(repr=False)
    artifact_root: Path | None
    identity: str

    @property
    def cache_fingerprint(self) -> str:
        return f"mlflow:{self.identity}"


@dataclass(frozen=True)
class ModelCard:
    """What a version was trained on and how it scored on its validation month."""

    taxi_type: str
    model_key: str  # the training and the validation bytes: one version per pair
    validation_month: str
    train_months: list[str]
    data_sha256: dict[str, str]
    params: dict[str, Any]
    code_version: str
    metrics: dict[str, float]
    train_rows: int
    val_rows: int
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # The training alone (months' bytes, parameters, code): equal keys, equal weights.
    # Empty on cards written before it was recorded.
    training_key: str = ""


@dataclass(frozen=True)
class ScoredMonth:
    """One version's run on the RMSE-by-month chart."""

    version: str
    month: str
    rmse: float
    champion_rmse: float | None  # production's RMSE on the same month, if there was one
    promoted: bool


@dataclass(frozen=True)
class ModelVersion:
    """A registered version of a taxi type's model."""

    taxi_type: str
    number: int
    run_id: str
    card: ModelCard

    @property
    def name(self) -> str:
        return f"v{self.number}"

    @property
    def model_name(self) -> str:
        return model_name(self.taxi_type)

    @property
    def uri(self) -> str:
        """`models:/taxi-duration-<type>/<number>`, for `mlflow.pyfunc.load_model`."""
        return f"models:/{self.model_name}/{self.number}"

    @property
    def cache_fingerprint(self) -> str:
        return f"{self.taxi_type}/{self.number}/{self.card.model_key}/{self.run_id}"


@dataclass(frozen=True)
class TrainingDataset:
    """A month a run trained or validated on, logged as an MLflow dataset input."""

    name: str
    sha256: str
    source: str
    frame: pd.DataFrame = field(repr=False)
    context: Literal["training", "validation"]


@dataclass(frozen=True)
class TrainingRecord:
    """Everything an MLflow run of a challenger records besides its model."""

    card: ModelCard
    params: dict[str, str]
    tags: dict[str, str]
    datasets: list[TrainingDataset]
    pickup_column: str
    chart_svg: str | None = None


@dataclass(frozen=True)
class Promotion:
    """The outcome of a promotion attempt: production before and after it."""

    promoted: bool
    reason: str
    production: str | None
    replaced: str | None = None


class ModelRegistry:
    """Model versions and the champion alias of each taxi type, in an MLflow tracking store."""

    def __init__(
        self, tracking_uri: str, artifact_root: Path | None = None, *, identity: str | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self._identity = identity

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry `settings` name (`MLFLOW_TRACKING_URI`, or the local store), with
        this process signed in to it (`sign_in`)."""
        sign_in(settings)
        return cls(settings.tracking_uri, settings.mlflow_artifacts_dir)

    @classmethod
    def of(cls, ref: RegistryRef) -> ModelRegistry:
        """The registry a task input names."""
        return cls(ref.tracking_uri, ref.artifact_root, identity=ref.identity)

    @cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # --- reading --------------------------------------------------------------
    def versions(self, taxi_type: str) -> list[ModelVersion]:
        """All taxiops versions of a taxi type, oldest first."""
        return [_version(taxi_type, v) for v in self._carded_versions(taxi_type)]

    def taxi_types(self) -> list[str]:
        """Taxi types that have a registered model."""
        found = self.client.search_registered_models(f"name LIKE '{MODEL_NAME_PREFIX}%'")
        return sorted(m.name.removeprefix(MODEL_NAME_PREFIX) for m in found)

    def production(self, taxi_type: str) -> ModelVersion | None:
        """The version the `champion` alias points at, or None before the first promotion."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(model_name(taxi_type), CHAMPION_ALIAS)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        if _CARD_TAG not in (found.tags or {}):
            raise RegistryError(
                self.tracking_uri,
                f"{model_name(taxi_type)}@{CHAMPION_ALIAS} is version {found.version}, "
                "which taxiops did not register; point the alias at a taxiops version",
            )
        return _version(taxi_type, found)

    def version(self, taxi_type: str, number: int) -> ModelVersion:
        """One version by number."""
        return _version(
            taxi_type, self.client.get_model_version(model_name(taxi_type), str(number))
        )

    def promotion_of(self, version: ModelVersion) -> dict[str, Any] | None:
        """What the promotion of `version` recorded (`by`, `replaced`, `at`), if it was promoted."""
        tags = self.client.get_model_version(version.model_name, str(version.number)).tags or {}
        raw = tags.get(_PROMOTION_TAG)
        return None if raw is None else dict(json.loads(raw))

    def rmse_history(self, taxi_type: str, limit: int = 24) -> list[ScoredMonth]:
        """The last `limit` versions, oldest first: each challenger's RMSE on its validation
        month beside production's RMSE on that month (as `record_outcome` logged it), and
        whether the challenger was promoted."""
        ours = self._carded_versions(taxi_type)[-limit:]
        if not ours:
            return []
        run_ids = ", ".join(f"'{v.run_id}'" for v in ours)
        runs = self.client.search_runs(
            [self._experiment_id()],
            filter_string=f"attributes.run_id IN ({run_ids})",
            max_results=len(ours),
        )
        champion_rmse = {r.info.run_id: r.data.metrics.get(_CHAMPION_RMSE_METRIC) for r in runs}
        history = []
        for found_version in ours:
            version = _version(taxi_type, found_version)
            history.append(
                ScoredMonth(
                    version=version.name,
                    month=version.card.validation_month,
                    rmse=version.card.metrics["rmse"],
                    champion_rmse=champion_rmse.get(version.run_id),
                    promoted=_PROMOTION_TAG in (found_version.tags or {}),
                )
            )
        return history

    def log_chart(self, version: ModelVersion, svg: str, name: str) -> None:
        """Add an SVG chart to the version's run, as artifact `name`."""
        self.client.log_text(version.run_id, svg, name)

    def load_model(self, version: ModelVersion) -> DurationModel:
        """The model of a version, ready to predict."""
        from mlflow.artifacts import download_artifacts

        from taxiops import ml

        with (
            _fluent_store(self.tracking_uri),  # `models:/` resolves through MLflow's globals
            tempfile.TemporaryDirectory(prefix="taxiops-model-") as folder,
        ):
            local = Path(download_artifacts(artifact_uri=version.uri, dst_path=folder))
            try:
                return ml.DurationModel.load(local / "artifacts" / "model")
            except (OSError, ValueError) as exc:
                raise RegistryError(
                    self.tracking_uri, f"cannot load {version.model_name} {version.name}: {exc}"
                ) from exc

    def ref(self) -> RegistryRef:
        """This registry as a task input, creating its experiment and identity on first use."""
        return RegistryRef(self.tracking_uri, self.artifact_root, self._store_identity())

    # --- writing --------------------------------------------------------------
    def register(self, model: DurationModel, record: TrainingRecord) -> ModelVersion:
        """Log a challenger as a run and register it as a version of its taxi type's model;
        the same card again (same `model_key`: the same training judged on the same bytes)
        returns the first version."""
        card = record.card
        # `log_model` needs MLflow's fluent globals, and a `models:/` source resolves by them.
        with _fluent_store(self.tracking_uri):
            run_id = self._finished_run(card.model_key) or self._log_run(model, record)
            name = model_name(card.taxi_type)
            self._ensure_registered_model(name)
            existing = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
            if existing:
                found = existing[0]
            else:
                tags = self.client.get_run(run_id).data.tags
                found = self.client.create_model_version(
                    name,
                    tags[_MODEL_URI_TAG],
                    run_id=run_id,
                    # A tracking server refuses a `models:/` source without its model id.
                    model_id=tags[_MODEL_ID_TAG],
                    tags={_CARD_TAG: json.dumps(asdict(card), sort_keys=True)},
                    description=(
                        f"{card.taxi_type} trained on {', '.join(card.train_months)}, "
                        f"validated on {card.validation_month}"
                    ),
                )
        return _version(card.taxi_type, self._await_ready(found))

    def promote_if_better(
        self,
        challenger: ModelVersion,
        metrics: Metrics,
        *,
        champion: ModelVersion | None,
        champion_metrics: Metrics | None,
        rescore: Scorer,
        lock: Lock,
        decided_by: str,
    ) -> Promotion:
        """Judge the challenger against production and promote it if it wins, holding
        `lock(taxi_type)` (one that holds across machines). If production changed since
        `champion` was scored (another run promoted meanwhile), the new production model is
        scored with `rescore` and judged against instead, and the reason says so.
        `decided_by` (the flow run) is recorded with the promotion, so a retry of the same
        decision finds it instead of judging the challenger against itself. A challenger
        that is production already (a re-run of the month that promoted it) changes
        nothing, so it is answered without waiting for the lock."""
        taxi_type = challenger.taxi_type
        current = self.production(taxi_type)
        if current is not None and current.number == challenger.number:
            return self._already_production(challenger, decided_by)
        with lock(taxi_type):
            current = self.production(taxi_type)
            if current is not None and current.number == challenger.number:
                return self._already_production(challenger, decided_by)
            note = ""
            if _number(current) != _number(champion):
                note = (
                    f"production changed during this run ({_name(champion)} -> "
                    f"{_name(current)}); judged against {_name(current)}: "
                )
                champion = current
                champion_metrics = None if current is None else rescore(current)
            promoted, reason = judge(challenger, metrics, champion, champion_metrics)
            if not promoted:
                return Promotion(False, note + reason, _name(champion), None)
            record = {
                "by": decided_by,
                "replaced": _number(champion),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            # The record first: a decision that set the alias always says what it replaced.
            name = challenger.model_name
            self.client.set_model_version_tag(
                name, str(challenger.number), _PROMOTION_TAG, json.dumps(record)
            )
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, str(challenger.number))
        return Promotion(True, note + reason, challenger.name, _name(champion))

    def record_outcome(
        self,
        version: ModelVersion,
        metrics: dict[str, float],
        tags: dict[str, str],
        *,
        champion_rmse: float | None,
    ) -> None:
        """Add what is known only once the flow ends (its seconds, the verdict, production's
        RMSE on the same month) to the run."""
        from mlflow.entities import Metric, RunTag

        if champion_rmse is not None:
            metrics = {**metrics, _CHAMPION_RMSE_METRIC: champion_rmse}
        now = int(time.time() * 1000)
        self.client.log_batch(
            version.run_id,
            metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
            tags=[RunTag(key, value) for key, value in tags.items()],
        )

    # --- internals --------------------------------------------------------------
    def _carded_versions(self, taxi_type: str) -> list[MlflowModelVersion]:
        """The versions of a taxi type's model that taxiops registered (they carry its
        card), oldest first, as MLflow returns them (with their tags)."""
        found = self.client.search_model_versions(f"name='{model_name(taxi_type)}'")
        ours = [v for v in found if _CARD_TAG in (v.tags or {})]
        return sorted(ours, key=lambda v: int(v.version))

    def _already_production(self, challenger: ModelVersion, decided_by: str) -> Promotion:
        record = self.promotion_of(challenger) or {}
        if record.get("by") == decided_by:  # this decision, retried after a fault
            replaced = record.get("replaced")
            return Promotion(
                True,
                f"{challenger.name} promoted",
                challenger.name,
                None if replaced is None else f"v{replaced}",
            )
        return Promotion(
            False,
            f"{challenger.name} is the production model itself (trained and judged on the "
            "same data): production unchanged",
            challenger.name,
            None,
        )

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(EXPERIMENT_NAME)
        if found is not None:
            return str(found.experiment_id)
        location = None if self.artifact_root is None else self.artifact_root.resolve().as_uri()
        try:
            return str(
                self.client.create_experiment(
                    EXPERIMENT_NAME,
                    artifact_location=location,
                    tags={_STORE_ID_TAG: uuid.uuid4().hex},
                )
            )
        except MlflowException as exc:  # created meanwhile by another run
            found = self.client.get_experiment_by_name(EXPERIMENT_NAME)
            if found is None:
                raise exc from None
            return str(found.experiment_id)

    def _store_identity(self) -> str:
        if self._identity is None:
            experiment = self.client.get_experiment(self._experiment_id())
            identity = experiment.tags.get(_STORE_ID_TAG)
            if identity is None:  # an experiment made by hand: adopt it
                identity = uuid.uuid4().hex
                self.client.set_experiment_tag(experiment.experiment_id, _STORE_ID_TAG, identity)
            self._identity = identity
        return self._identity

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                self.client.create_registered_model(
                    name, description="NYC taxi trip duration in minutes, by taxiops."
                )
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def _finished_run(self, version_key: str) -> str | None:
        runs = self.client.search_runs(
            [self._experiment_id()],
            filter_string=(
                f"tags.`{_VERSION_KEY_TAG}` = '{version_key}' and attributes.status = 'FINISHED'"
            ),
            max_results=1,
        )
        return None if not runs else str(runs[0].info.run_id)

    def _log_run(self, model: DurationModel, record: TrainingRecord) -> str:
        import mlflow

        card = record.card
        tags = {**record.tags, _VERSION_KEY_TAG: card.model_key}
        with (
            mlflow.start_run(
                experiment_id=self._experiment_id(),
                run_name=f"{card.taxi_type} {card.validation_month}",
                tags=tags,
            ) as run,
            tempfile.TemporaryDirectory(prefix="taxiops-model-") as staging,
        ):
            mlflow.log_params(record.params)
            mlflow.log_metrics(
                {
                    "rmse": card.metrics["rmse"],
                    "mae": card.metrics["mae"],
                    "train_rows": card.train_rows,
                    "val_rows": card.val_rows,
                }
            )
            for dataset in record.datasets:
                mlflow.log_input(_dataset(dataset), context=dataset.context)
            if record.chart_svg is not None:
                mlflow.log_text(record.chart_svg, "predicted_vs_actual.svg")
            info = _log_pyfunc(model, Path(staging), record)
            mlflow.set_tags({_MODEL_URI_TAG: info.model_uri, _MODEL_ID_TAG: info.model_id})
        return str(run.info.run_id)

    def _await_ready(self, version: MlflowModelVersion) -> MlflowModelVersion:
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while version.status != "READY":
            if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RegistryError(
                    self.tracking_uri,
                    f"{version.name} version {version.version} is {version.status}: "
                    f"{version.status_message or 'not ready'}; it is not promoted",
                )
            time.sleep(0.5)
            version = self.client.get_model_version(version.name, version.version)
        return version


@contextmanager
def _fluent_store(uri: str) -> Iterator[None]:
    """MLflow's fluent globals pointed at `uri`, then back (None when unset). MLflow
    also writes the URI into this process's environment for subprocesses to inherit;
    left there, every later child (a flow run, a `taxiops` command) would use this store,
    and a URI holding credentials would travel in their environment."""
    import mlflow

    before = {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def model_requirements() -> list[str]:
    """The pip requirements a logged model carries: the versions installed here."""
    import mlflow
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    return [
        f"mlflow=={mlflow.__version__}",
        f"xgboost=={xgb.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]


def check_model_requirements() -> None:
    """Run the check MLflow makes of a logged model's requirements against this environment
    (it warns on a mismatch). Its first run in a process maps every installed distribution
    to its modules, ~0.4 s; processes forked after this one (the runs of `taxiops up`'s fork
    server) inherit the map and log their models without it."""
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(model_requirements())


def _log_pyfunc(model: DurationModel, staging: Path, record: TrainingRecord) -> Any:
    """Log the model as a pyfunc that needs no taxiops: its saved files, a copy of the
    feature code, and `pyfunc_model.py` as its code."""
    import mlflow

    from taxiops.ml import features

    folder = staging / "model"
    model.save(folder)
    shutil.copyfile(features.__file__, folder / "features.py")
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"model": str(folder)},
        model_config={"pickup_column": record.pickup_column},
        pip_requirements=model_requirements(),
    )


def _dataset(dataset: TrainingDataset) -> Any:
    """An MLflow dataset of the prepared frame; its schema is read off its first rows."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.types.utils import _infer_schema

    # MLflow keeps a digest of at most 36 characters; the run's tags hold the whole sha256.
    with warnings.catch_warnings():
        # That a path could be two kinds of local source, and that integer columns cannot
        # hold nulls: the prepared frame has none.
        warnings.simplefilter("ignore", UserWarning)
        found = from_pandas(
            dataset.frame,
            source=dataset.source,
            name=dataset.name,
            targets="duration",
            digest=dataset.sha256[:32],
        )
        # MLflow infers the schema (a cached_property) by scanning every row for nulls:
        # 6.5 s for a 3M-row month. The prepared frame holds none, so its first rows give
        # the same schema.
        found.__dict__["schema"] = _infer_schema(dataset.frame.head(_SCHEMA_ROWS))
    return found


def _version(taxi_type: str, found: MlflowModelVersion) -> ModelVersion:
    try:
        card = ModelCard(**json.loads((found.tags or {})[_CARD_TAG]))
    except (KeyError, ValueError, TypeError) as exc:
        raise RegistryError(
            "mlflow", f"{found.name} version {found.version} has no readable card: {exc}"
        ) from exc
    return ModelVersion(
        taxi_type=taxi_type, number=int(found.version), run_id=str(found.run_id), card=card
    )


def _number(version: ModelVersion | None) -> int | None:
    return None if version is None else version.number


def _name(version: ModelVersion | None) -> str | None:
    return None if version is None else version.name
