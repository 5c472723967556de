"""Team mode brought up as the README's "Team mode" recipes do, for its end-to-end test and
its benchmark: a real PostgreSQL, `taxiops server` (Prefect and MLflow on it, basic auth on
both), `prefect deploy --all`, process workers (`prefect worker start`) and
`taxiops watch`, each a process with a home of its own. They share nothing but the
servers, and the incoming folder the workers read files from by path.

On a `Lan` each role runs on a host of its own (a network namespace) and PostgreSQL on
this process's; without one, everything listens on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from taxiops import names
from taxiops.app.server import free_port
from taxiops.ml import write_synth_month
from taxiops.registry import ModelRegistry
from taxiops.settings import load_settings
from taxiops.tripfile import Month, TaxiType
from tests.e2e.harness import WATCH_READY, Site, TaxiopsProcess
from tests.netns import GATEWAY, Lan
from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
USER = "team"
PASSWORD = secrets.token_urlsafe(18)
AUTH = f"{USER}:{PASSWORD}"
SERVER_READY = "taxiops server is up"
# Crash detection needs heartbeats (at least every 30 s, Prefect's floor) and a window
# longer than one beat; the default (90 s) is for machines, this keeps a test short.
SILENT_RUN_SECONDS = 40
SUBMITTED = re.compile(r"Worker '([\w-]+)' submitting flow run '([0-9a-f-]{36})'")
ABORTED = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")


def hosts(workers: int) -> list[str]:
    """The team's roles, one host each on a `Lan`."""
    return ["server", *worker_names(workers), "watcher"]


def worker_names(workers: int) -> list[str]:
    return [f"worker-{chr(ord('a') + i)}" for i in range(workers)]


@dataclass
class Team:
    """The running roles, and where to read what they did."""

    root: Path
    postgres: PostgresServer
    api_url: str
    mlflow_url: str
    server: TaxiopsProcess
    workers: dict[str, TaxiopsProcess]
    watcher_site: Site
    watcher: TaxiopsProcess

    def logs(self) -> str:
        """Everything every process of the team wrote, servers' own logs included."""
        return (
            "\n".join(path.read_text(errors="replace") for path in self.root.rglob("*.log"))
            + self.postgres.log_text()
        )

    def worker_of_runs(self) -> dict[str, str]:
        """flow run id -> the worker that submitted it, from the workers' own logs."""
        found: dict[str, str] = {}
        for worker in self.workers.values():
            log = worker.log(all_runs=True)
            # Both workers may try a run; the server lets one have it and aborts the other.
            aborted = set(ABORTED.findall(log))
            for name, run_id in SUBMITTED.findall(log):
                if run_id not in aborted:
                    assert found.setdefault(run_id, name) == name, f"{run_id} on two workers"
        return found

    def registry(self) -> ModelRegistry:
        return ModelRegistry.from_settings(
            load_settings(home=self.root / "reader", mlflow_tracking_uri=self.mlflow_url)
        )


@contextmanager
def running_team(
    root: Path,
    *,
    workers: int = 2,
    lan: Lan | None = None,
    silent_run_seconds: int = SILENT_RUN_SECONDS,
) -> Iterator[Team]:
    """The whole team under `root`, once every role is ready; this process reads what ran
    (Prefect and MLflow clients signed in). Everything stops on exit."""
    server_host = "127.0.0.1" if lan is None else lan.address("server")
    port, mlflow_port = free_port(), free_port()
    api_url = f"http://{server_host}:{port}/api"
    mlflow_url = f"http://{server_host}:{mlflow_port}"
    client_env = {"PREFECT_API_AUTH_STRING": AUTH, "MLFLOW_TRACKING_URI": mlflow_url}

    def on(host: str) -> list[str]:
        return [] if lan is None else lan.prefix(host)

    database_host = "127.0.0.1" if lan is None else lan.address(GATEWAY)
    with (
        PostgresServer.temporary(host=database_host) as postgres,
        _environ(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD),
        temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: AUTH}),
    ):
        postgres.create_database("prefect")
        postgres.create_database("mlflow")
        server_site = Site(
            root / "server",
            api_url=api_url,
            prefix=on("server"),
            env={
                "PREFECT_API_AUTH_STRING": AUTH,
                "TAXIOPS_SERVER_HOST": server_host,
                "TAXIOPS_SERVER_PORT": str(port),
                "TAXIOPS_MLFLOW_UI_PORT": str(mlflow_port),
                "TAXIOPS_SERVER_DATABASE_URL": postgres.url("prefect", driver="postgresql+asyncpg"),
                "TAXIOPS_MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow"),
                "TAXIOPS_SILENT_RUN_SECONDS": str(silent_run_seconds),
            },
        )
        watcher_site = Site(root / "watcher", api_url=api_url, env=client_env, prefix=on("watcher"))
        with server_site.start("server") as server:
            server.wait_for_log(SERVER_READY, timeout=180)
            deploy = subprocess.run(
                [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                cwd=ROOT,
                env=watcher_site.environment(),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
            started = {
                name: start_worker(root, api_url, name, client_env, prefix=on(name))
                for name in worker_names(workers)
            }
            try:
                for worker in started.values():
                    worker.wait_for_log("started!", timeout=120)
                with watcher_site.start("watch") as watcher:
                    watcher.wait_for_log(WATCH_READY)
                    yield Team(
                        root=root,
                        postgres=postgres,
                        api_url=api_url,
                        mlflow_url=mlflow_url,
                        server=server,
                        workers=started,
                        watcher_site=watcher_site,
                        watcher=watcher,
                    )
            finally:
                for worker in started.values():
                    worker.stop()


def start_worker(
    root: Path, api_url: str, name: str, env: dict[str, str], *, prefix: list[str]
) -> TaxiopsProcess:
    """`prefect worker start` on the taxiops pool, one run at a time, on a site (home) of
    its own; it looks for work every second (Prefect's default: 10 s)."""
    site = Site(root / name, api_url=api_url, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"})
    return TaxiopsProcess(
        ["worker", "start", "--pool", names.WORK_POOL, "--name", name, "--limit", "1"],
        site.environment(),
        cwd=ROOT,
        log_path=root / f"{name}.log",
        module="prefect",
        prefix=prefix,
    ).start()


def drop_at_once(site: Site, months: list[tuple[TaxiType, str]], rows: int = 2_000) -> list[Path]:
    """Write every month in staging first, then rename them all into the incoming folder."""
    staged = [
        write_synth_month(
            site.staging, taxi_type, Month.parse(month), rows=rows, seed=site.seed + i
        )
        for i, (taxi_type, month) in enumerate(months)
    ]
    return [path.rename(site.incoming / path.name) for path in staged]


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """`values` in this process's environment, the previous ones back on exit."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
