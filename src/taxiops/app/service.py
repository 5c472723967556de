"""`taxiops up`: a Prefect server, the served deployments, the automations and the watcher,
in one process tree, until Ctrl-C or SIGTERM stops them all.

`taxiops up --no-watch` leaves the watcher out, so it can run as its own `taxiops watch`
process (next to the files); the two meet only through the Prefect API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from prefect.client.orchestration import get_client
from prefect.runner import Runner
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    PREFECT_UI_URL,
    temporary_settings,
)

from taxiops.app.outage_logs import quiet_api_outages
from taxiops.app.server import (
    LocalMlflowServer,
    LocalPrefectServer,
    LocalServer,
    answers,
    is_healthy,
    ui_url_for,
)
from taxiops.app.supervisor import describe, stopped_within, supervise
from taxiops.errors import PrefectApiError, StartupError
from taxiops.intake import PrefectSubmitter, WatcherService
from taxiops.notify.automations import ApplyReport, set_up_alerting
from taxiops.notify.dispatch import dispatching
from taxiops.pipeline.deployments import start_serving
from taxiops.pipeline.warm_start import start_runs_warm, wait_until_warm
from taxiops.settings import Settings

logger = logging.getLogger("taxiops.app.service")


@dataclass(frozen=True)
class PrefectApi:
    """The Prefect API the service talks to, and whether taxiops started it."""

    api_url: str
    ui_url: str
    local: bool
    server: LocalPrefectServer | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ServiceReady:
    """What `on_ready` is told once everything runs."""

    api: PrefectApi
    automations: ApplyReport
    incoming_dir: str
    deployments: list[str]
    watching: bool = True  # False with `--no-watch`: a `taxiops watch` elsewhere hands files off
    mlflow_ui_url: str | None = None  # the MLflow UI, served here or the tracking server's


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
    auth = settings.api_auth_string
    server = LocalPrefectServer(
        state_dir=settings.server_dir,
        host=settings.server_host,
        port=settings.server_port,
        database_url=(
            None
            if settings.server_database_url is None
            else settings.server_database_url.get_secret_value()
        ),
        auth_string=None if auth is None else auth.get_secret_value(),
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
    updates: dict[Any, Any] = {PREFECT_API_URL: server.api_url, PREFECT_UI_URL: server.ui_url}
    if auth is not None:  # children (flow runs) read it from the environment, as workers do
        os.environ["PREFECT_API_AUTH_STRING"] = auth.get_secret_value()
        updates[PREFECT_API_AUTH_STRING] = auth.get_secret_value()
    try:
        with temporary_settings(updates=updates):
            yield PrefectApi(
                api_url=server.api_url, ui_url=server.ui_url, local=True, server=server
            )
    finally:
        flush_to_api()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextmanager
def mlflow_ui(settings: Settings) -> Iterator[Future[LocalMlflowServer | None]]:
    """Start the MLflow UI over the local tracking store, in the background (it takes
    seconds, as Prefect's server does), and make the store, so runs never race to create
    it. The future gives the server, or None when the UI is off or the store is a
    server's; it raises `StartupError` when the UI cannot start."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taxiops-mlflow-ui") as pool:
        started = pool.submit(_start_mlflow_ui, settings)
        try:
            yield started
        finally:
            with suppress(Exception):  # its error, if any, was raised where it was awaited
                server = started.result()
                if server is not None:
                    server.stop()


def _start_mlflow_ui(settings: Settings) -> LocalMlflowServer | None:
    from taxiops.registry import ModelRegistry

    if settings.mlflow_tracking_uri is not None or not settings.mlflow_ui:
        ModelRegistry.from_settings(settings).ref()
        return None
    server = LocalMlflowServer(
        state_dir=settings.home / "mlflow-ui",
        host=settings.server_host,
        port=settings.mlflow_ui_port,
        tracking_uri=settings.tracking_uri,
        artifacts_dir=settings.mlflow_artifacts_dir,
    )
    if answers(server.health_url):
        raise StartupError(
            "TAXIOPS_MLFLOW_UI_PORT",
            f"something already serves {server.ui_url}",
            "set TAXIOPS_MLFLOW_UI_PORT to another port, or TAXIOPS_MLFLOW_UI=false",
        )
    try:
        server.start()
        ModelRegistry.from_settings(settings).ref()
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        raise StartupError(
            "TAXIOPS_MLFLOW_UI_PORT",
            f"cannot start the MLflow UI: {exc}",
            "see the log it names, or set TAXIOPS_MLFLOW_UI=false",
        ) from exc
    return server


def flush_to_api(timeout: float = 10.0) -> None:
    """Send the logs and events this process still holds (the runner's last lines about the
    runs it cancelled, say) while the local server still answers; left to the exit, they
    meet a stopped server and Prefect retries them for a while, then prints
    "Error logging to API"."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def run_service(
    settings: Settings,
    *,
    watch: bool = True,
    slack_webhook_url: str | None = None,
    on_ready: Callable[[ServiceReady], None] | None = None,
) -> None:
    """Run everything until Ctrl-C or SIGTERM; then stop the watcher, the runner and the server.

    `watch=False` serves the deployments and applies the automations only."""
    quiet_runner_polls()
    settings.home.mkdir(parents=True, exist_ok=True)
    if watch:
        settings.incoming_dir.mkdir(parents=True, exist_ok=True)
    with (
        quiet_api_outages(settings.home),
        mlflow_ui(settings) as ui,
        prefect_api(settings) as api,
        dispatching(settings, slack_webhook_url=slack_webhook_url),
    ):
        asyncio.run(_serve(settings, api, ui, watch, slack_webhook_url, on_ready))


async def _serve(
    settings: Settings,
    api: PrefectApi,
    ui_started: Future[LocalMlflowServer | None],
    watch: bool,
    slack_webhook_url: str | None,
    on_ready: Callable[[ServiceReady], None] | None,
) -> None:
    # The fork server imports what runs need while the rest starts up.
    warm = settings.warm_start and start_runs_warm()
    async with get_client() as client:
        automations = await set_up_alerting(
            client, settings, api.ui_url, slack_webhook_url=slack_webhook_url
        )
    ui = await asyncio.wrap_future(ui_started)  # before any run: the store exists
    runner, deployments = await start_serving(settings)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    supervisor = RunnerSupervisor(settings, api.api_url, runner)

    def wake_the_runner() -> None:  # on a watcher thread, after each hand-off
        with suppress(RuntimeError):  # the loop is closed: `taxiops up` is stopping
            asyncio.run_coroutine_threadsafe(supervisor.look_for_runs_now(), loop)

    watcher = WatcherChild(settings, api.api_url, on_handed_off=wake_the_runner) if watch else None
    if watcher is not None:
        await watcher.start(stop)
    serving = asyncio.create_task(supervisor.serve(stop))
    children: list[asyncio.Task[Any]] = [serving]
    for server in (api.server, ui):
        if server is not None:
            children.append(asyncio.create_task(supervise(ServerChild(server), stop)))
    if watcher is not None:
        children.append(asyncio.create_task(supervise(watcher, stop)))
    if warm:  # so that the first run does not wait for those imports
        await asyncio.to_thread(wait_until_warm)
    try:
        if on_ready is not None:
            on_ready(
                ServiceReady(
                    api=api,
                    automations=automations,
                    incoming_dir=str(settings.incoming_dir),
                    deployments=[f"{d.flow_name}/{d.name}" for d in deployments],
                    watching=watcher is not None,
                    mlflow_ui_url=settings.mlflow_ui_url,
                )
            )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({*children, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for child in children:
            if child.done():
                child.result()  # a child that gave up: its ChildFailedError ends `taxiops up`
    finally:
        stop.set()
        if watcher is not None:
            await watcher.astop()
        await supervisor.astop()
        serving.cancel()
        # Not cancelled: a server start in progress runs in a thread; let it finish, so
        # `prefect_api` stops the server it started.
        await asyncio.gather(*children, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


class ServerChild:
    """A local server (Prefect, the MLflow UI) as a supervised child: restarted on the same
    port and state, so every URL handed out stays valid."""

    def __init__(self, server: LocalServer, *, poll_every: float = 0.2) -> None:
        self._server = server
        self._poll_every = poll_every
        self._watched = False
        self.name = f"the local {server.label}"

    async def start(self, stop: asyncio.Event) -> bool:
        if self._server.pid is not None or not self._watched:
            return True  # `run_service` started it; `wait` tells if it died since
        if await asyncio.to_thread(answers, self._server.health_url):
            raise PrefectApiError(f"something else now serves {self._server.health_url}")
        await asyncio.to_thread(self._server.start)
        logger.info("%s answers again at %s", self.name, self._server.health_url)
        return True

    async def wait(self, stop: asyncio.Event) -> str:
        self._watched = True
        while self._server.pid is not None:
            if await stopped_within(stop, self._poll_every):
                return "stopped"
        code = self._server.returncode
        if code is not None and -code in signal.valid_signals():
            return f"exited with {code} ({signal.Signals(-code).name})"
        return f"exited with {code}"


class WatcherChild:
    """The watcher as a supervised child: a `WatcherService` that stopped working (see
    `WatcherService.failure`, e.g. its folder was removed) is stopped and a new one started,
    which recreates the folder and checks what landed meanwhile."""

    name = "the watcher"

    def __init__(
        self,
        settings: Settings,
        api_url: str,
        *,
        poll_every: float = 0.5,
        on_handed_off: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._api_url = api_url
        self._poll_every = poll_every
        self._on_handed_off = on_handed_off
        self.service: WatcherService | None = None

    async def start(self, stop: asyncio.Event) -> bool:
        if self.service is not None and self.service.failure() is None:
            return True  # the first one, started before the runner; `wait` watches it
        await self.astop()
        submitter = PrefectSubmitter(self._api_url, on_created=self._on_handed_off)
        service = WatcherService(self._settings, submitter)
        await asyncio.to_thread(service.start)
        self.service = service
        if stop.is_set():  # `taxiops up` is stopping: it may have stopped the last one already
            await self.astop()
            return False
        return True

    async def wait(self, stop: asyncio.Event) -> str:
        while True:
            failure = None if self.service is None else self.service.failure()
            if failure is not None:
                return failure
            if await stopped_within(stop, self._poll_every):
                return "stopped"

    async def astop(self) -> None:
        """Stop the current service and join its threads."""
        service, self.service = self.service, None
        if service is not None:
            await asyncio.to_thread(service.stop)


class RunnerSupervisor:
    """Keeps a Prefect Runner serving the deployments through Prefect API outages.

    A runner rides out a short outage by itself: its client retries each request for
    about a minute (2 + 4 + 8 + 16 + 32 s), and its poll loop gives up only after three
    such rounds fail in a row (`critical_service_loop`), about three minutes. A client
    that never reached the API retries no refused connection, so a runner that had not
    polled yet gives up within seconds. Either way `Runner.start()` raises and, left
    alone, `taxiops up` would end as if stopped by Ctrl-C, with exit code 0.
    The supervisor then waits for the API to answer and serves again with a new runner.
    Runs the old runner had in flight may be cut short with it; a run whose heartbeats
    stop is marked Crashed by the "silent run" automation, and the watcher retries
    crashed runs (`TAXIOPS_RETRY_CRASHED_RUNS`).
    """

    name = "the Prefect runner"

    def __init__(
        self, settings: Settings, api_url: str, runner: Runner, *, health_every: float = 0.5
    ) -> None:
        self._settings = settings
        self._api_url = api_url
        self._health_every = health_every
        self.runner = runner
        self._spent = False  # whether `runner` has run and stopped
        self.restarts = 0

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, starting a new runner whenever one gives up.

        A runner that stops within `RestartPolicy.quick_failure_seconds` of its start counts
        as a quick failure; restarts then back off, and after `max_quick_failures` in a row
        `ChildFailedError` is raised (something other than an outage is wrong), so
        `taxiops up` ends with it."""
        await supervise(self, stop)

    async def start(self, stop: asyncio.Event) -> bool:
        """A runner holding the deployments: the first one, or a new one once the API
        answers; False if stopped first."""
        if not self._spent:
            return True
        runner = await self._new_runner(stop)
        if runner is None:
            return False
        self.runner, self._spent = runner, False
        self.restarts += 1
        logger.info("serving the deployments again (runner restart %d)", self.restarts)
        return True

    async def wait(self, stop: asyncio.Event) -> str:
        """Run the runner until its poll loop ends (`astop` ends it when stopping)."""
        self._spent = True
        await self.runner.start()
        return f"its poll loop ended; serving again once {self._api_url} answers"

    async def _new_runner(self, stop: asyncio.Event) -> Runner | None:
        """A runner holding the deployments, once the API answers; None if stopped first."""
        while await self._wait_for_api(stop):
            try:
                runner, _ = await start_serving(self._settings)
                return runner
            except Exception as exc:  # answered /health, yet not ready (503) or gone again
                logger.warning("cannot serve the deployments yet: %s", describe(exc))
            if await stopped_within(stop, self._health_every):
                break
        return None

    async def look_for_runs_now(self) -> None:
        """Submit the runs waiting for this runner now, not at its next poll: the watcher
        calls it after each hand-off, so the runner can poll slowly (`runner_poll_seconds`)
        and still start a dropped file at once. A failure is left to the next poll."""
        runner = self.runner
        if not runner.started or runner.stopping:
            return
        try:
            # Runner's own poll step (private in Prefect 3.9): it skips runs it is already
            # submitting, so a poll that runs at the same moment starts nothing twice.
            await runner._get_and_submit_flow_runs()  # type: ignore[no-untyped-call]
        except Exception as exc:
            logger.debug("looking for runs after a hand-off failed: %s", describe(exc))

    async def astop(self) -> None:
        """Stop the current runner (and cancel its runs, as `Runner.astop` does)."""
        if self.runner.started:
            await self.runner.astop()

    async def _wait_for_api(self, stop: asyncio.Event) -> bool:
        """Wait until the API answers (True) or `stop` is set (False)."""
        while not await asyncio.to_thread(is_healthy, self._api_url):
            if await stopped_within(stop, self._health_every):
                return False
        return not stop.is_set()


class _LogOnChange(logging.Filter):
    """Lets a repeated log line through only when its arguments change."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self._message = message
        self._last: object = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self._message:
            return True
        changed = record.args != self._last
        self._last = record.args
        return changed


def quiet_runner_polls() -> None:
    """The runner logs "N scheduled runs skipped (at capacity)" at every poll (ten a second
    with `TAXIOPS_RUNNER_POLL_SECONDS=0.1`) while a burst waits; log it when N changes."""
    runner_logger = logging.getLogger("prefect.runner")
    if not any(isinstance(f, _LogOnChange) for f in runner_logger.filters):
        runner_logger.addFilter(_LogOnChange("%d scheduled runs skipped (at capacity)"))
