"""`taxiops server`: team mode's server role, until Ctrl-C or SIGTERM.

On one machine it runs what every other role talks to:
- the Prefect server, on `TAXIOPS_SERVER_DATABASE_URL` (PostgreSQL) or SQLite;
- the MLflow tracking server, on `TAXIOPS_MLFLOW_BACKEND_STORE_URI`, keeping model files
  in `TAXIOPS_MLFLOW_ARTIFACTS_DESTINATION` and serving them over HTTP, so workers share
  no folder;
- the `taxiops-process` work pool, the notifier block and the automations;
- the alert dispatcher: the notifier block queues alerts in this machine's outbox.

Both servers are supervised children, restarted on the same port and state. With
`PREFECT_API_AUTH_STRING` (USER:PASSWORD) both need it: Prefect's basic auth, and MLflow's
basic-auth app with that user as admin. A server bound beyond loopback without it does
not start. Workers (`prefect worker start`) and the watcher (`taxiops watch`) run
elsewhere and meet these servers only.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    PREFECT_UI_URL,
    temporary_settings,
)

from taxiops import names
from taxiops.app.preflight import check_exposure
from taxiops.app.server import LocalMlflowServer, LocalPrefectServer, LocalServer
from taxiops.app.service import ServerChild, flush_to_api
from taxiops.app.supervisor import supervise
from taxiops.errors import StartupError
from taxiops.notify.automations import ApplyReport, set_up_alerting
from taxiops.notify.dispatch import dispatching
from taxiops.settings import Settings


@dataclass(frozen=True)
class TeamServerReady:
    """What `on_ready` is told once both servers answer."""

    prefect_api_url: str
    prefect_ui_url: str
    mlflow_url: str
    automations: ApplyReport
    authenticated: bool


def team_servers(settings: Settings) -> tuple[LocalPrefectServer, LocalMlflowServer]:
    """The two servers `settings` describe (not started)."""
    auth = settings.api_auth_string
    database = settings.server_database_url
    prefect = LocalPrefectServer(
        state_dir=settings.server_dir,
        host=settings.server_host,
        port=settings.server_port,
        database_url=None if database is None else database.get_secret_value(),
        auth_string=None if auth is None else auth.get_secret_value(),
    )
    store = settings.mlflow_backend_store_uri
    mlflow = LocalMlflowServer(
        state_dir=settings.home / "mlflow-server",
        host=settings.server_host,
        port=settings.mlflow_ui_port,
        tracking_uri=(
            store.get_secret_value()
            if store is not None
            else f"sqlite:///{settings.local_tracking_db.resolve()}"
        ),
        artifacts_destination=settings.mlflow_artifacts_destination
        or str((settings.home / "mlartifacts").resolve()),
        credentials=settings.credentials,
    )
    return prefect, mlflow


def run_team_server(
    settings: Settings, *, on_ready: Callable[[TeamServerReady], None] | None = None
) -> None:
    """Start both servers, set up the pool, block and automations, dispatch alerts; stop it
    all on Ctrl-C or SIGTERM. Raises `StartupError` when a server cannot start."""
    check_exposure(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    prefect, mlflow = team_servers(settings)
    with _started(prefect, mlflow), _client_settings(settings, prefect):
        with dispatching(settings):
            asyncio.run(_serve(settings, prefect, mlflow, on_ready))
        flush_to_api()


@contextmanager
def _started(*servers: LocalServer) -> Iterator[None]:
    """Start the servers at once (each takes seconds); stop every one on exit."""
    try:
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            for server, started in [(s, pool.submit(s.start)) for s in servers]:
                try:
                    started.result()
                except (RuntimeError, TimeoutError) as exc:
                    raise StartupError(
                        _setting_of(server),
                        f"cannot start the {server.label}: {exc}",
                        "see the log it names",
                    ) from exc
        yield
    finally:
        for server in servers:
            server.stop()


def _setting_of(server: LocalServer) -> str:
    return (
        "TAXIOPS_SERVER_PORT"
        if isinstance(server, LocalPrefectServer)
        else "TAXIOPS_MLFLOW_UI_PORT"
    )


@contextmanager
def _client_settings(settings: Settings, prefect: LocalPrefectServer) -> Iterator[None]:
    """This process (the dispatcher's events, the automations) talks to its own server."""
    api_url = f"http://{_reachable(prefect.host)}:{prefect.port}/api"
    updates: dict[Any, Any] = {PREFECT_API_URL: api_url, PREFECT_UI_URL: prefect.ui_url}
    if settings.api_auth_string is not None:
        updates[PREFECT_API_AUTH_STRING] = settings.api_auth_string.get_secret_value()
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates=updates):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def _reachable(host: str) -> str:
    """An address this machine reaches a server bound to `host` at."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


async def _serve(
    settings: Settings,
    prefect: LocalPrefectServer,
    mlflow: LocalMlflowServer,
    on_ready: Callable[[TeamServerReady], None] | None,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=names.WORK_POOL, type="process"))
        # Alert links open the UI by the name people use (PREFECT_UI_URL), not the bind address.
        ui_url = os.environ.get("PREFECT_UI_URL") or prefect.ui_url
        automations = await set_up_alerting(client, settings, ui_url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    children = [asyncio.create_task(supervise(ServerChild(s), stop)) for s in (prefect, mlflow)]
    try:
        if on_ready is not None:
            on_ready(
                TeamServerReady(
                    prefect_api_url=f"{prefect.ui_url}/api",
                    prefect_ui_url=ui_url,
                    mlflow_url=mlflow.ui_url,
                    automations=automations,
                    authenticated=settings.credentials is not None,
                )
            )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({*children, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for child in children:
            if child.done():
                child.result()  # a server that kept dying: its ChildFailedError ends the command
    finally:
        stop.set()
        await asyncio.gather(*children, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
