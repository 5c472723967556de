"""All taxiops settings: one class, `TAXIOPS_` environment variables, read from `.env`.

Nothing is read at import time: call `load_settings()` when a command starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taxiops.errors import SettingsError
from taxiops.tripfile import TaxiType

# Schemes of the stores MLflow's tracking and registry clients open ("" is a local path).
_MLFLOW_STORE_SCHEMES = frozenset(
    {"", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks"}
)

# MLflow's basic-auth app refuses a shorter admin password.
_MIN_PASSWORD_LENGTH = 12


class Settings(BaseSettings):
    """taxiops configuration. Every field is documented in `.env.example`."""

    model_config = SettingsConfigDict(
        env_prefix="TAXIOPS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- where things live -------------------------------------------------
    home: Path = Field(
        Path(".taxiops"), description="Root of all state: models, results, ledger, server DB."
    )
    incoming_dir: Path = Field(
        Path("data/incoming"), description="Folder watched for new month files."
    )

    # --- training ----------------------------------------------------------
    train_months: int = Field(
        1, ge=1, description="Earlier months of the same taxi type to train on."
    )
    min_duration_minutes: float = Field(1.0, gt=0, description="Shortest trip kept, in minutes.")
    max_duration_minutes: float = Field(60.0, gt=0, description="Longest trip kept, in minutes.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of days held out when a month is split by pickup time."
    )
    max_file_bytes: int = Field(
        2 * 1024**3, gt=0, description="Month files larger than this are rejected."
    )
    max_file_rows: int = Field(
        30_000_000,
        gt=0,
        description="Month files whose parquet footer declares more rows than this are "
        "rejected before any data is read (the largest TLC months hold about 16 M).",
    )
    max_outside_month_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Reject a file when more than this share of pickups fall outside its month.",
    )
    drift_psi_threshold: float = Field(
        0.1,
        gt=0,
        description="A feature whose PSI against the training months reaches this has drifted "
        "(the success alert says so; a taxiops.data.drift event is emitted).",
    )

    # --- retries -----------------------------------------------------------
    task_retries: int = Field(3, ge=0, description="Retries of a task after a transient fault.")
    task_retry_delay_seconds: float = Field(
        2.0, ge=0, description="First retry delay; doubles each retry."
    )

    # --- the local Prefect server and the served deployments -----------------
    server_host: str = Field(
        "127.0.0.1", description="Host of the local Prefect server `taxiops up` starts."
    )
    server_port: int = Field(
        4200, ge=1, le=65535, description="Port of the local Prefect server and UI."
    )
    mlflow_tracking_uri: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "TAXIOPS_MLFLOW_TRACKING_URI"),
        description="MLflow tracking and registry store; default: SQLite under TAXIOPS_HOME.",
    )
    mlflow_ui: bool = Field(
        True, description="Whether `taxiops up` serves the MLflow UI (local store only)."
    )
    mlflow_ui_port: int = Field(
        5000, ge=1, le=65535, description="Port of the MLflow UI `taxiops up` serves."
    )
    api_auth_string: SecretStr | None = Field(
        None,
        # Prefect's variable only: a TAXIOPS_ name Prefect's own clients (workers) never read.
        validation_alias=AliasChoices("PREFECT_API_AUTH_STRING"),
        description="USER:PASSWORD of the team servers (`taxiops server`): the Prefect API's "
        "basic auth, also the MLflow tracking server's admin; Prefect's own variable, so "
        "workers send it too. Required when TAXIOPS_SERVER_HOST is beyond loopback.",
    )
    server_database_url: SecretStr | None = Field(
        None,
        description="The database of the Prefect server taxiops starts, e.g. "
        "postgresql+asyncpg://user:pass@db/prefect; default: SQLite under TAXIOPS_HOME.",
    )
    mlflow_backend_store_uri: SecretStr | None = Field(
        None,
        description="The store of the MLflow tracking server `taxiops server` runs, e.g. "
        "postgresql://user:pass@db/mlflow; default: SQLite under TAXIOPS_HOME.",
    )
    mlflow_artifacts_destination: str | None = Field(
        None,
        description="Where the tracking server of `taxiops server` keeps model files it "
        "serves to every worker (a folder or s3://...); default: TAXIOPS_HOME/mlartifacts.",
    )
    serve_limit: int = Field(2, ge=1, description="Training runs executed at once by `taxiops up`.")
    schedule_cron: str = Field("0 6 2 * *", description="Cron of the monthly retraining schedule.")
    schedule_timezone: str = Field(
        "UTC", description="Timezone of the monthly retraining schedule."
    )
    publication_lag_months: int = Field(
        2,
        ge=0,
        description="The monthly retrain expects the month this many months before the run's "
        "(TLC publishes a month about two months after it ends).",
    )
    retrain_taxi_types: Annotated[list[TaxiType], NoDecode] = Field(
        ["green", "yellow"], description="Taxi types the monthly retrain checks, comma separated."
    )
    heartbeat_seconds: int = Field(
        30,
        ge=30,
        description="Flow-run heartbeat; a silent run is declared Crashed after a few missed beats.",
    )
    silent_run_seconds: float = Field(
        90,
        ge=10,
        description="A running flow run with no heartbeat for this long is marked Crashed (server side).",
    )
    runner_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="How often `taxiops up` looks for new runs it was not told about (the "
        "schedule's, retries from the UI); the watcher's hand-offs start at once.",
    )
    warm_start: bool = Field(
        True,
        description="Start each run of `taxiops up` as a fork of a process that imported "
        "Prefect, pandas, XGBoost and MLflow once; off, each run is a new interpreter "
        "importing them itself.",
    )
    retry_crashed_runs: int = Field(
        1,
        ge=0,
        description="Times a file whose training run crashed is handed off again on its own; "
        "`taxiops retry FILE` does it by hand.",
    )

    # --- the watcher ---------------------------------------------------------
    watch_polling: bool = Field(
        False, description="Poll the folder instead of inotify (network folders)."
    )
    watch_debounce_seconds: float = Field(
        0.1, ge=0, description="Events for one file within this window are checked once."
    )
    watch_polling_interval_seconds: float = Field(
        1.0, gt=0, description="Scan interval of the polling observer."
    )
    watch_poll_runs_seconds: float = Field(
        5.0, gt=0, description="How often submitted runs are read back for their outcome."
    )
    watch_backoff_max_seconds: float = Field(
        60.0, gt=0, description="Longest wait between hand-off attempts while Prefect is down."
    )
    watch_claim_lease_seconds: float = Field(
        120.0, gt=0, description="A watcher's claim on a file expires after this (crashed watcher)."
    )
    watch_settle_seconds: float = Field(
        0.1,
        ge=0,
        description="Without a close or move event, a file's size must hold this long before hand-off.",
    )
    watch_incomplete_seconds: float = Field(
        30.0,
        ge=0,
        description="A month file left empty or without a parquet footer this long is quarantined.",
    )

    # --- fetching real months (`taxiops fetch`) -----------------------------------
    tlc_base_url: str = Field(
        "https://d37ci6vzurychx.cloudfront.net/trip-data/",
        description="Where TLC publishes the monthly trip files (<type>_tripdata_YYYY-MM.parquet).",
    )
    fetch_concurrency: int = Field(2, ge=1, description="Month files downloaded at once.")
    fetch_retries: int = Field(
        5, ge=0, description="Retries of a download after a 5xx, a timeout or a cut connection."
    )
    fetch_retry_delay_seconds: float = Field(
        1.0, ge=0, description="First delay before a download retry; doubles, at most 30 s."
    )
    fetch_timeout_seconds: float = Field(
        30.0, gt=0, description="A download waiting this long for a byte counts as timed out."
    )

    # --- notifications -------------------------------------------------------
    slack_webhook_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SLACK_WEBHOOK_URL", "TAXIOPS_SLACK_WEBHOOK_URL"),
        description="Slack incoming webhook; unset means the local inbox in the demo.",
    )
    slack_bot_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SLACK_BOT_TOKEN", "TAXIOPS_SLACK_BOT_TOKEN"),
        description="Slack bot token, used with slack_channel instead of the webhook.",
    )
    slack_channel: str | None = Field(
        None,
        validation_alias=AliasChoices("SLACK_CHANNEL", "TAXIOPS_SLACK_CHANNEL"),
        description="Slack channel for the bot token.",
    )
    apprise_urls: SecretStr | None = Field(None, description="Comma-separated apprise URLs.")
    missing_data_days: float = Field(
        35, gt=0, description="Alert when a taxi type has no new month for this many days."
    )

    # --- alert delivery (the outbox and its dispatcher) -------------------------
    alert_max_age_seconds: float = Field(
        86_400,
        gt=0,
        description="An alert not delivered this long after it was raised is reported "
        "undeliverable (status and a taxiops.alert.undeliverable event).",
    )
    alert_send_interval_seconds: float = Field(
        1.0,
        ge=0,
        description="Least time between two posts to one channel (Slack webhooks allow one a "
        "second).",
    )
    alert_retry_max_seconds: float = Field(
        60,
        gt=0,
        description="Longest wait between delivery attempts of an alert while a channel is down.",
    )
    alert_storm_count: int = Field(
        5,
        ge=1,
        description="Alerts of one kind sent one by one within the storm window; the rest "
        "become one grouped message.",
    )
    alert_storm_window_seconds: float = Field(
        60,
        gt=0,
        description="The storm window; a grouped message goes out when its window ends.",
    )

    @field_validator("mlflow_tracking_uri", "mlflow_backend_store_uri")
    @classmethod
    def _known_store(cls, value: SecretStr | None) -> SecretStr | None:
        """A scheme MLflow keeps runs and models in; the message names the scheme only (the
        URI may hold credentials)."""
        if value is None:
            return value
        scheme = store_scheme(value.get_secret_value())
        if scheme not in _MLFLOW_STORE_SCHEMES:
            known = ", ".join(sorted(_MLFLOW_STORE_SCHEMES - {""}))
            raise ValueError(f"scheme {scheme!r} is not a store MLflow knows ({known})")
        return value

    @field_validator("api_auth_string")
    @classmethod
    def _user_and_password(cls, value: SecretStr | None) -> SecretStr | None:
        """USER:PASSWORD (HTTP basic auth), the password 12 characters or more (MLflow's
        basic-auth app refuses shorter ones); the message holds neither."""
        if value is None:
            return value
        user, colon, password = value.get_secret_value().partition(":")
        if not (user and colon and password):
            raise ValueError("must be USER:PASSWORD, both non-empty")
        if len(password) < _MIN_PASSWORD_LENGTH:
            raise ValueError(f"its password must be {_MIN_PASSWORD_LENGTH} characters or more")
        return value

    @field_validator("server_database_url")
    @classmethod
    def _prefect_database(cls, value: SecretStr | None) -> SecretStr | None:
        """A database the Prefect server runs on; the message names the scheme only."""
        if value is None:
            return value
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
            raise ValueError(
                f"scheme {scheme!r} is not a Prefect server database "
                "(postgresql+asyncpg or sqlite+aiosqlite)"
            )
        return value

    @field_validator("retrain_taxi_types", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # --- derived locations -----------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        """MLflow's store: `MLFLOW_TRACKING_URI`, else SQLite at `TAXIOPS_HOME/mlflow.db`."""
        if self.mlflow_tracking_uri is not None:
            return self.mlflow_tracking_uri.get_secret_value()
        # Runs at once write to one SQLite file: wait for its lock rather than fail at once.
        return f"sqlite:///{self.local_tracking_db.resolve()}?timeout=60"

    @property
    def local_tracking_db(self) -> Path:
        """The SQLite file of the local MLflow store (unused when MLFLOW_TRACKING_URI is set)."""
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts_dir(self) -> Path | None:
        """Where a local store keeps model files; a tracking server keeps its own."""
        return None if self.mlflow_tracking_uri is not None else self.home / "mlartifacts"

    @property
    def mlflow_ui_url(self) -> str | None:
        """The MLflow UI users open: the tracking server, or the one `taxiops up` serves."""
        server = urlsplit(self.tracking_uri)
        if server.scheme in ("http", "https"):  # without any user:password@
            return (
                f"{server.scheme}://{server.hostname}"
                + (f":{server.port}" if server.port else "")
                + server.path.rstrip("/")
            )
        if self.mlflow_ui and self.mlflow_tracking_uri is None:
            return f"http://{self.server_host}:{self.mlflow_ui_port}"
        return None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(user, password) of `PREFECT_API_AUTH_STRING`, or None."""
        if self.api_auth_string is None:
            return None
        user, _, password = self.api_auth_string.get_secret_value().partition(":")
        return user, password

    @property
    def server_on_loopback(self) -> bool:
        """Whether the servers taxiops starts listen on this machine only."""
        return is_loopback(self.server_host)

    @property
    def results_dir(self) -> Path:
        return self.home / "results"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.sqlite3"

    @property
    def outbox_path(self) -> Path:
        """The alert outbox the notifier block fills and the dispatcher drains."""
        return self.home / "alerts.db"

    @property
    def server_dir(self) -> Path:
        return self.home / "server"

    @property
    def quarantine_dir(self) -> Path:
        """`quarantine/` beside the incoming folder (resolved: `TAXIOPS_INCOMING_DIR=.` must
        not put it inside the folder it keeps bad files out of)."""
        return self.incoming_dir.resolve().parent / "quarantine"

    @property
    def api_url(self) -> str:
        return f"http://{self.server_host}:{self.server_port}/api"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`, with explicit overrides on top.

    Raises `SettingsError` naming each variable whose value is invalid."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError([_problem(error) for error in exc.errors()]) from None


def variable_for(field: str) -> str:
    """The environment variable a settings field is read from."""
    info = Settings.model_fields.get(field)
    alias = None if info is None else info.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"TAXIOPS_{field.upper()}"


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback name or address (`localhost`, 127.0.0.0/8, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def store_scheme(uri: str) -> str:
    """The kind of store an MLflow URI names: `postgresql` for `postgresql+psycopg2://...`."""
    return urlsplit(uri).scheme.split("+", 1)[0]


def _problem(error: ErrorDetails) -> tuple[str, str]:
    field = _field_of(str(error["loc"][0])) if error["loc"] else "settings"
    variable = variable_for(field)
    info = Settings.model_fields.get(field)
    secret = info is not None and "SecretStr" in str(info.annotation)
    given = "" if secret else f"{error.get('input')!r} is not valid: "
    # A validator's ValueError arrives as "Value error, <ours>": ours is the message.
    return variable, given + error["msg"].removeprefix("Value error, ")


def _field_of(name: str) -> str:
    """The settings field an error location names: the field, or one of its aliases
    (pydantic-settings reports an alias-read value by the alias)."""
    if name in Settings.model_fields:
        return name
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and name in alias.choices:
            return field
    return name
