"""`taxiops up`: a Prefect server, the served deployments, the automations and the watcher,
in one process tree, until Ctrl-C or SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from taxiops.alerting import ApplyReport, set_up_alerting
from taxiops.deployments import start_serving
from taxiops.errors import TaxiopsError
from taxiops.server import LocalPrefectServer, is_healthy, ui_url_for
from taxiops.settings import Settings
from taxiops.watcher import PrefectSubmitter, WatcherService


class PrefectApiError(TaxiopsError):
    """The Prefect API to use cannot be reached or started."""


@dataclass(frozen=True)
class PrefectApi:
    """The Prefect API the service talks to, and whether taxiops started it."""

    api_url: str
    ui_url: str
    local: bool


@dataclass(frozen=True)
class ServiceReady:
    """What `on_ready` is told once everything runs."""

    api: PrefectApi
    automations: ApplyReport
    incoming_dir: str
    deployments: list[str]


@contextmanager
def prefect_api(settings: Settings) -> Iterator[PrefectApi]:
    """Use `PREFECT_API_URL` if set, else start a local server on SQLite under TAXIOPS_HOME.
    Sets the URL for this process and every child it starts."""
    external = os.environ.get("PREFECT_API_URL")
    if external:
        if not is_healthy(external):
            raise PrefectApiError(
                f"PREFECT_API_URL={external} does not answer /health; start it or unset it"
            )
        api = PrefectApi(api_url=external, ui_url=ui_url_for(external), local=False)
        with temporary_settings(updates={PREFECT_API_URL: external}):
            yield api
        return
    server = LocalPrefectServer(
        state_dir=settings.server_dir, host=settings.server_host, port=settings.server_port
    )
    if is_healthy(server.api_url):
        raise PrefectApiError(
            f"something already serves {server.api_url}; set PREFECT_API_URL to use it "
            "or TAXIOPS_SERVER_PORT to start another"
        )
    try:
        server.start()
    except (RuntimeError, TimeoutError) as exc:
        raise PrefectApiError(f"cannot start the local Prefect server: {exc}") from exc
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(
            updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: server.ui_url}
        ):
            yield PrefectApi(api_url=server.api_url, ui_url=server.ui_url, local=True)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def run_service(
    settings: Settings,
    *,
    slack_webhook_url: str | None = None,
    on_ready: Callable[[ServiceReady], None] | None = None,
) -> None:
    """Run everything until Ctrl-C or SIGTERM; then stop the watcher, the runner and the server."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.incoming_dir.mkdir(parents=True, exist_ok=True)
    with prefect_api(settings) as api:
        asyncio.run(_serve(settings, api, slack_webhook_url, on_ready))


async def _serve(
    settings: Settings,
    api: PrefectApi,
    slack_webhook_url: str | None,
    on_ready: Callable[[ServiceReady], None] | None,
) -> None:
    async with get_client() as client:
        automations = await set_up_alerting(
            client, settings, api.ui_url, slack_webhook_url=slack_webhook_url
        )
    runner, deployments = await start_serving(settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    watcher = WatcherService(settings, PrefectSubmitter(api.api_url))
    watcher.start()
    serving = asyncio.create_task(runner.start())
    try:
        if on_ready is not None:
            on_ready(
                ServiceReady(
                    api=api,
                    automations=automations,
                    incoming_dir=str(settings.incoming_dir),
                    deployments=[f"{d.flow_name}/{d.name}" for d in deployments],
                )
            )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await asyncio.to_thread(watcher.stop)
        if runner.started:
            await runner.astop()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
