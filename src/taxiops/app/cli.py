"""The `taxiops` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from taxiops.errors import TaxiopsError

if TYPE_CHECKING:
    from taxiops.app.service import ServiceReady
    from taxiops.app.team import TeamServerReady
    from taxiops.notify.automations import ApplyReport
    from taxiops.settings import Settings

app = typer.Typer(
    help="Keep a NYC taxi trip-duration model fresh: drop a month file, get a model, hear about it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command()
def train(
    new_file: Annotated[Path, typer.Argument(help="The month to evaluate on (and train for).")],
    train_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--train",
            help="A training month; repeat for several. Default: earlier months beside NEW_FILE.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON line.")
    ] = False,
) -> None:
    """Run the training flow once against the configured Prefect API."""
    from prefect.client.schemas.objects import State

    from taxiops import names
    from taxiops.app import preflight
    from taxiops.pipeline.entrypoints import TRAIN_ENTRYPOINT, load_flow
    from taxiops.pipeline.report import TrainingSummary
    from taxiops.settings import load_settings

    settings = load_settings()
    preflight.check_folders(settings, incoming=False)
    preflight.check_api_answers(preflight.configured_api_url())
    preflight.check_tracking_store(settings)
    train_flow = load_flow(TRAIN_ENTRYPOINT)
    if new_file.is_file():  # else the flow itself says what is wrong with it
        from taxiops.tripfile import sha256_of

        run_name = names.flow_run_name(new_file.name, sha256_of(new_file))
        train_flow = train_flow.with_options(flow_run_name=run_name)
    state = cast(
        "State[TrainingSummary]",
        train_flow(
            new_file=str(new_file),
            train_files=None if train_file is None else [str(p) for p in train_file],
            return_state=True,
        ),
    )
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        message = str(error) if isinstance(error, BaseException) else (state.message or state.name)
        if state.name == names.REJECTED_STATE and state.message:
            message = state.message  # also says where the file was moved
        if as_json:
            print(json.dumps({"error": message, "state": state.name}))
        else:
            typer.secho(f"training failed: {message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    summary = state.result()
    if as_json:
        print(summary.model_dump_json(exclude={"months"}))
        return
    verdict = "promoted" if summary.promoted else "not promoted"
    champion = "none" if summary.champion_rmse is None else f"{summary.champion_rmse:.3f}"
    print(
        f"{summary.taxi_type} {summary.month}: {summary.model_version} RMSE {summary.rmse:.3f} "
        f"MAE {summary.mae:.3f} (champion {champion}) -> {verdict}; "
        f"{summary.seconds:.2f} s (pipeline {summary.pipeline_seconds:.2f} s), "
        f"{summary.cached_tasks}/{summary.total_tasks} tasks cached"
    )


@app.command()
def synth(
    folder: Annotated[Path, typer.Argument(help="Where to write the month files.")],
    months: Annotated[
        list[str] | None,
        typer.Option("--month", help="YYYY-MM; repeat for several. Default: 2023-01, 2023-02."),
    ] = None,
    taxi_type: Annotated[str, typer.Option("--type", help="green or yellow.")] = "green",
    rows: Annotated[int, typer.Option(help="Trips per month.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic TLC-schema month files (for demos and tests; never real data)."""
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import TAXI_TYPES, Month

    if taxi_type not in TAXI_TYPES:
        raise typer.BadParameter(f"--type must be one of {', '.join(TAXI_TYPES)}")
    for index, text in enumerate(months or ["2023-01", "2023-02"]):
        path = write_synth_month(folder, taxi_type, Month.parse(text), rows=rows, seed=seed + index)
        print(path)


@app.command()
def fetch(
    taxi_type: Annotated[str, typer.Argument(help="green or yellow.")],
    months: Annotated[
        list[str],
        typer.Argument(help="YYYY-MM or YYYY-MM..YYYY-MM (inclusive); several allowed."),
    ],
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Folder to put the files in. Default: the incoming folder."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Download months already present or in the ledger again."),
    ] = False,
) -> None:
    """Download TLC month files from TAXIOPS_TLC_BASE_URL: resumable, verified, never partial."""
    from taxiops.app.progress import fetch_progress_for
    from taxiops.intake.fetch import (
        FetchInterruptedError,
        FetchOptions,
        MonthFile,
        fetch_months,
        parse_months,
    )
    from taxiops.settings import load_settings
    from taxiops.tripfile import TAXI_TYPES

    if taxi_type not in TAXI_TYPES:
        raise typer.BadParameter(f"TYPE must be one of {', '.join(TAXI_TYPES)}")
    try:
        wanted = parse_months(months)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    options = FetchOptions.from_settings(load_settings(), folder=to, force=force)
    requests = [MonthFile(taxi_type, month) for month in wanted]
    try:
        with fetch_progress_for(sys.stdout) as progress:
            results = fetch_months(requests, options, progress)
    except FetchInterruptedError as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130) from None
    failed = [r for r in results if not r.ok]
    fetched = sum(r.outcome == "fetched" for r in results)
    print(
        f"{fetched} fetched, {len(results) - fetched - len(failed)} skipped, "
        f"{len(failed)} not fetched, into {options.folder}",
        flush=True,
    )
    if failed:
        raise typer.Exit(1)


def _show_taxiops_logs() -> None:
    """INFO lines of taxiops's own loggers (a file seen, handed off, finished) on stderr."""
    logger = logging.getLogger("taxiops")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
            )
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _announce(ready: ServiceReady) -> None:
    api = ready.api
    where = "local server (SQLite under TAXIOPS_HOME)" if api.local else "existing server"
    print(f"taxiops is up — Prefect UI: {api.ui_url}  ({where})", flush=True)
    if ready.mlflow_ui_url is not None:
        print(
            f"  MLflow UI: {ready.mlflow_ui_url}  (models: taxi-duration-<type>@champion)",
            flush=True,
        )
    if ready.watching:
        print(
            f"  watching {ready.incoming_dir} for <green|yellow>_tripdata_YYYY-MM.parquet",
            flush=True,
        )
    else:
        print(
            f"  not watching (--no-watch): run `taxiops watch` with PREFECT_API_URL={api.api_url}",
            flush=True,
        )
    print(f"  serving {', '.join(ready.deployments)}", flush=True)
    _print_automations(ready.automations)
    print("Press Ctrl-C to stop.", flush=True)


@app.command()
def up(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch/--no-watch",
            help="Run the watcher in this process; --no-watch leaves it to `taxiops watch`.",
        ),
    ] = True,
) -> None:
    """Start everything: Prefect server (unless PREFECT_API_URL is set), deployments, automations, watcher."""
    from taxiops.app.service import run_service
    from taxiops.settings import load_settings

    settings = load_settings()
    _check_service_can_start(settings, watch=watch)
    _show_taxiops_logs()
    run_service(settings, watch=watch, on_ready=_announce)
    print("taxiops stopped.", flush=True)


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Trips per synthetic sample month.")] = 20_000,
) -> None:
    """The offline demo: sample months in the incoming folder, alerts in this terminal, then `up`."""
    from taxiops.app.service import run_service
    from taxiops.ml import write_synth_month
    from taxiops.notify import SlackInbox
    from taxiops.settings import load_settings
    from taxiops.tripfile import Month, TaxiType, file_name_for

    settings = load_settings()
    _check_service_can_start(settings, watch=True)
    _show_taxiops_logs()
    samples: list[tuple[TaxiType, str]] = [
        ("green", "2023-01"),
        ("green", "2023-02"),
        ("yellow", "2023-01"),
        ("yellow", "2023-02"),
    ]
    for seed, (taxi_type, month) in enumerate(samples):
        if not (settings.incoming_dir / file_name_for(taxi_type, Month.parse(month))).exists():
            path = write_synth_month(
                settings.incoming_dir, taxi_type, Month.parse(month), rows=rows, seed=seed
            )
            print(f"sample month: {path}", flush=True)
    use_inbox = settings.slack_webhook_url is None and settings.slack_bot_token is None
    inbox = SlackInbox() if use_inbox else None
    if inbox is not None:
        inbox.start()
        print(
            f"no SLACK_WEBHOOK_URL: alerts go to the local inbox at {inbox.base_url} and print here"
        )
    try:
        run_service(
            settings,
            slack_webhook_url=None if inbox is None else inbox.url,
            on_ready=_announce_demo,
        )
    finally:
        if inbox is not None:
            inbox.stop()
    print("taxiops demo stopped.", flush=True)


def _check_service_can_start(settings: Settings, *, watch: bool) -> None:
    """Folders, the local server's port or the configured API, then a configured MLflow
    store: one line if not."""
    from taxiops.app import preflight

    preflight.check_folders(settings, incoming=watch)
    api_url = preflight.configured_api_url()
    if api_url:
        preflight.check_api_answers(api_url)
    else:
        preflight.check_exposure(settings)
        preflight.check_port_free(settings)
    preflight.check_tracking_store(settings)


def _announce_demo(ready: ServiceReady) -> None:
    _announce(ready)
    print(
        f"Try: {_this_command()} synth "
        f"{ready.incoming_dir} --month 2023-03   (a new month: a new run, a new alert)",
        flush=True,
    )


def _this_command() -> str:
    """How to type `taxiops` in this shell: the bare name when PATH finds this very program,
    else its path (e.g. `.venv/bin/taxiops` from `make demo`)."""
    import os
    import shutil

    program = Path(sys.argv[0])
    if program.name != "taxiops":
        return f"{Path(sys.executable).parent / 'taxiops'}"
    found = shutil.which("taxiops")
    if found is not None and Path(found).resolve() == program.resolve():
        return "taxiops"
    try:
        return os.path.relpath(program)
    except ValueError:
        return str(program)


@app.command()
def server() -> None:
    """Team mode's server: Prefect + MLflow (on TAXIOPS_SERVER_DATABASE_URL and
    TAXIOPS_MLFLOW_BACKEND_STORE_URI), the work pool, the automations and the alerts."""
    from taxiops.app import preflight
    from taxiops.app.team import run_team_server
    from taxiops.settings import load_settings

    settings = load_settings()
    preflight.check_exposure(settings)
    preflight.check_folders(settings, incoming=False)
    preflight.check_port_free(settings)
    _show_taxiops_logs()
    run_team_server(settings, on_ready=_announce_team_server)
    print("taxiops server stopped.", flush=True)


def _print_automations(report: ApplyReport) -> None:
    print(
        f"  automations: {len(report.created)} created, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed",
        flush=True,
    )


def _announce_team_server(ready: TeamServerReady) -> None:
    auth = "basic auth on" if ready.authenticated else "no authentication (loopback only)"
    print(f"taxiops server is up — Prefect UI: {ready.prefect_ui_url}  ({auth})", flush=True)
    print(f"  workers and watchers: PREFECT_API_URL={ready.prefect_api_url}", flush=True)
    print(f"  MLflow: MLFLOW_TRACKING_URI={ready.mlflow_url}", flush=True)
    _print_automations(ready.automations)
    print("Press Ctrl-C to stop.", flush=True)


@app.command()
def watch() -> None:
    """Run the watcher alone, handing files to deployments served elsewhere (PREFECT_API_URL)."""
    from taxiops.app import preflight
    from taxiops.errors import StartupError
    from taxiops.intake import PrefectSubmitter, WatcherService
    from taxiops.settings import load_settings

    settings = load_settings()
    preflight.check_folders(settings)
    _show_taxiops_logs()
    try:
        preflight.check_api_answers(preflight.configured_api_url())
    except StartupError as exc:
        # Not fatal: the watcher records files in its ledger and hands them off once the
        # API answers (a watcher restarted during a server outage must not give up).
        logging.getLogger("taxiops.intake").warning("%s; handing off once it answers", exc)
    WatcherService(settings, PrefectSubmitter.from_settings(settings)).run_forever()


@app.command()
def retry(
    file: Annotated[
        str,
        typer.Argument(
            help="The month file: a path (found by its bytes) or a file name (its newest entry)."
        ),
    ],
) -> None:
    """Hand a file whose training run failed or crashed to Prefect again, as a new run."""
    from taxiops.intake import Ledger, retry_file
    from taxiops.settings import load_settings

    settings = load_settings()
    if not settings.ledger_path.is_file():
        typer.secho(
            f"cannot retry {file}: no ledger at {settings.ledger_path}; check TAXIOPS_HOME",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2)
    retried = retry_file(Ledger(settings.ledger_path), file)
    print(
        f"{retried.path.name}: queued as run {retried.runs} "
        f"(sha256 {retried.sha256[:12]}); a running watcher hands it to Prefect within "
        "a second or so, else the next `taxiops up` or `taxiops watch` does",
        flush=True,
    )


@app.command()
def status() -> None:
    """Print the month files seen, the entries quarantined, and each taxi type's champion."""
    from taxiops.intake import rejection_rows, status_rows
    from taxiops.notify.dispatch import alert_states, print_alert_summary
    from taxiops.settings import load_settings

    settings = load_settings()
    rows = status_rows(settings)
    print(f"{'state':<10} {'file':<34} {'sha256':<12} {'flow run':<36} detail")
    for entry in rows:
        print(
            f"{entry.state.value:<10} {Path(entry.path).name:<34} {entry.sha256[:12]:<12} "
            f"{entry.flow_run_id or '-':<36} {entry.detail or ''}"
        )
    if not rows:
        print("(no files seen yet)")
    rejections = rejection_rows(settings)
    delivered = alert_states(settings, [rejection.id for rejection in rejections])
    if rejections:
        print(f"\n{'rejected':<16} {'file':<34} {'rule':<18} {'alert':<8} kept as")
    for rejection in rejections:
        # "sent" only once a channel answered 2xx; "announced": Prefect has the event.
        alert = delivered.get(rejection.id) or (
            "announced" if rejection.alert_sent_at is not None else "pending"
        )
        kept = rejection.quarantined_path or "(gone: nothing to keep)"
        print(
            f"{rejection.rejected_at.astimezone():%Y-%m-%d %H:%M} {rejection.path.name:<34} "
            f"{rejection.rule:<18} {alert:<8} {kept}"
        )
    print_alert_summary(settings)
    for line in _model_lines(settings):
        print(line)


def _model_lines(settings: Settings) -> list[str]:
    """One line per taxi type's registered model; a store that does not answer is a
    `StartupError`, at once: a read command waits for none of MLflow's own HTTP retries."""
    import os

    from mlflow.exceptions import MlflowException

    from taxiops.app.preflight import check_tracking_store, unreadable_store
    from taxiops.registry import CHAMPION_ALIAS, ModelRegistry, model_name

    if settings.mlflow_tracking_uri is None and not settings.local_tracking_db.exists():
        return []  # no local store yet: a read command does not create one
    check_tracking_store(settings)  # the line `up` gives for a server that does not answer
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    registry = ModelRegistry.from_settings(settings)
    lines = []
    try:
        for taxi_type in registry.taxi_types():
            production = registry.production(taxi_type)
            versions = len(registry.versions(taxi_type))
            name = model_name(taxi_type)
            if production is None:
                lines.append(f"{name}: {versions} versions, none is @{CHAMPION_ALIAS}")
            else:
                card = production.card
                lines.append(
                    f"{name}@{CHAMPION_ALIAS}: {production.name} "
                    f"(RMSE {card.metrics['rmse']:.3f} on {card.validation_month}), "
                    f"{versions} versions"
                )
    except MlflowException as exc:
        raise unreadable_store(settings, exc) from None
    return lines


@app.command()
def dispatch() -> None:
    """Deliver the queued alerts (TAXIOPS_HOME/alerts.db); for the Prefect server's machine
    in team mode, where `taxiops up` does not run."""
    from taxiops.notify.dispatch import dispatch_until_signalled
    from taxiops.settings import load_settings

    _show_taxiops_logs()
    dispatch_until_signalled(load_settings())


@app.command()
def inbox(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 4280,
    log: Annotated[Path | None, typer.Option(help="Append messages to this JSONL file.")] = None,
) -> None:
    """A local Slack-compatible incoming webhook that prints what it receives."""
    from taxiops.notify import serve_inbox

    serve_inbox(host, port, log)


automations_app = typer.Typer(help="Prefect automations declared in automations/*.yaml.")
app.add_typer(automations_app, name="automations")


@automations_app.command("apply")
def automations_apply() -> None:
    """Save the notifier block and create or update every automation (idempotent)."""
    import asyncio

    from prefect.client.orchestration import get_client

    from taxiops.app import preflight
    from taxiops.app.server import ui_url_for
    from taxiops.notify.automations import set_up_alerting
    from taxiops.settings import load_settings

    settings = load_settings()
    preflight.check_api_answers(preflight.configured_api_url())

    async def apply() -> ApplyReport:
        async with get_client() as client:
            return await set_up_alerting(client, settings, ui_url_for(str(client.api_url)))

    report = asyncio.run(apply())
    for label, names in (
        ("created", report.created),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("removed", report.removed),
    ):
        for name in names:
            print(f"{label:<10} {name}")
    if report.duplicates_deleted:
        print(f"deleted {report.duplicates_deleted} duplicate copies")


def main() -> None:
    """Console entry point: taxiops errors become one clear line and exit code 2."""
    try:
        app()
    except TaxiopsError as exc:
        typer.secho(f"taxiops: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
