"""Team mode end to end (README, "Team mode"): a real PostgreSQL, `taxiops server` (Prefect
and MLflow on it, basic auth on both), two `prefect worker start` process workers after
`prefect deploy --all`, and `taxiops watch`, each a process of its own with a home of its
own. They share nothing but the servers, and the incoming folder the workers read files
from by path.

One team for the module; the tests run in file order and the last one kills a worker.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from taxiops import names
from taxiops.app.server import free_port
from taxiops.ml import write_synth_month
from taxiops.registry import ModelRegistry
from taxiops.settings import load_settings
from taxiops.tripfile import Month, TaxiType
from tests.e2e.harness import (
    WATCH_READY,
    Site,
    TaxiopsProcess,
    descendants,
    flow_run_processes,
    runs_by_file,
    task_runs_of,
    wait_until,
    wait_until_each_ran_once,
    wait_until_finished,
)
from tests.postgres import INSTALL_HINT, PostgresServer, postgres_bin_dir

ROOT = Path(__file__).resolve().parents[2]
USER = "team"
PASSWORD = secrets.token_urlsafe(18)
AUTH = f"{USER}:{PASSWORD}"
WORKERS = ("worker-a", "worker-b")
SERVER_READY = "taxiops server is up"
# Crash detection needs heartbeats (at least every 30 s, Prefect's floor) and a window
# longer than one beat; the default (90 s) is for machines, this keeps the test short.
SILENT_RUN_SECONDS = 40
SUBMITTED = re.compile(r"Worker '([\w-]+)' submitting flow run '([0-9a-f-]{36})'")
ABORTED = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")


@dataclass
class Team:
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


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    if postgres_bin_dir() is None:
        why = f"no PostgreSQL: {INSTALL_HINT} (make test does, as root)"
        if "postgresql" in os.environ.get("TAXIOPS_TESTS_REQUIRE", "").split(","):
            pytest.fail(why)
        pytest.skip(why)
    root = tmp_path_factory.mktemp("team")
    port, mlflow_port = free_port(), free_port()
    api_url, mlflow_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{mlflow_port}"
    client_env = {"PREFECT_API_AUTH_STRING": AUTH, "MLFLOW_TRACKING_URI": mlflow_url}
    with (
        PostgresServer.temporary() as postgres,
        pytest.MonkeyPatch.context() as patch,
        temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: AUTH}),
    ):
        # This process reads back what ran (the harness's Prefect client, MLflow's client).
        patch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        patch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        postgres.create_database("prefect")
        postgres.create_database("mlflow")
        server_site = Site(
            root / "server",
            api_url=api_url,
            env={
                "PREFECT_API_AUTH_STRING": AUTH,
                "TAXIOPS_SERVER_PORT": str(port),
                "TAXIOPS_MLFLOW_UI_PORT": str(mlflow_port),
                "TAXIOPS_SERVER_DATABASE_URL": postgres.url("prefect", driver="postgresql+asyncpg"),
                "TAXIOPS_MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow"),
                "TAXIOPS_SILENT_RUN_SECONDS": str(SILENT_RUN_SECONDS),
            },
        )
        watcher_site = Site(root / "watcher", api_url=api_url, env=client_env)
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
            workers = {name: start_worker(root, api_url, name, client_env) for name in WORKERS}
            try:
                for worker in workers.values():
                    worker.wait_for_log("started!", timeout=120)
                with watcher_site.start("watch") as watcher:
                    watcher.wait_for_log(WATCH_READY)
                    yield Team(
                        root=root,
                        postgres=postgres,
                        api_url=api_url,
                        mlflow_url=mlflow_url,
                        server=server,
                        workers=workers,
                        watcher_site=watcher_site,
                        watcher=watcher,
                    )
            finally:
                for worker in workers.values():
                    worker.stop()


def start_worker(root: Path, api_url: str, name: str, env: dict[str, str]) -> TaxiopsProcess:
    """`prefect worker start` on the taxiops pool, one run at a time, on a site (home) of
    its own; it looks for work every second (Prefect's default: 10 s)."""
    site = Site(root / name, api_url=api_url, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"})
    return TaxiopsProcess(
        ["worker", "start", "--pool", names.WORK_POOL, "--name", name, "--limit", "1"],
        site.environment(),
        cwd=ROOT,
        log_path=root / f"{name}.log",
        module="prefect",
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


def assert_no_secret_anywhere(team: Team) -> None:
    """Neither the team's password nor PostgreSQL's in any log or any process's argv."""
    for secret in (PASSWORD, team.postgres.password):
        assert secret not in team.logs()
        for pid in (team.server.pid, *team.server.children(), *team.watcher.children()):
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists():
                assert secret not in cmdline.read_bytes().decode(errors="replace")
        for worker in team.workers.values():
            if worker.alive:
                for pid in (worker.pid, *worker.children()):
                    cmdline = Path(f"/proc/{pid}/cmdline")
                    if cmdline.exists():
                        assert secret not in cmdline.read_bytes().decode(errors="replace")


def test_both_servers_refuse_requests_without_credentials(team: Team) -> None:
    flow_runs = f"{team.api_url}/flow_runs/filter"
    experiments = f"{team.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.post(flow_runs, json={}).status_code == 401
    assert httpx.post(flow_runs, json={}, auth=(USER, "wrong-password")).status_code == 401
    assert httpx.post(flow_runs, json={}, auth=(USER, PASSWORD)).status_code == 200
    assert httpx.get(experiments).status_code == 401
    assert httpx.get(experiments, auth=(USER, PASSWORD)).status_code == 200
    # Health checks stay open, for load balancers and `taxiops status`.
    assert httpx.get(f"{team.api_url}/health").status_code == 200
    assert httpx.get(f"{team.mlflow_url}/health").status_code == 200
    assert_no_secret_anywhere(team)


def test_twelve_months_at_once_run_once_each_spread_over_both_workers(team: Team) -> None:
    months: list[tuple[TaxiType, str]] = [
        (taxi_type, f"2022-{month:02d}")
        for taxi_type in ("green", "yellow")
        for month in range(1, 7)
    ]
    files = drop_at_once(team.watcher_site, months)
    runs = wait_until_each_ran_once(team.api_url, files, timeout=420)

    by_worker = team.worker_of_runs()
    ran_on = [by_worker.get(str(run.id)) for run in runs.values()]
    assert None not in ran_on, f"runs no worker submitted: {by_worker}"
    assert set(ran_on) == set(WORKERS), f"a worker ran nothing: {ran_on}"
    registry = team.registry()
    for taxi_type in ("green", "yellow"):
        versions = registry.versions(taxi_type)
        assert len(versions) == 6, [v.card for v in versions]
        assert registry.production(taxi_type) is not None
    assert_no_secret_anywhere(team)


def test_two_promotions_on_two_workers_at_once_leave_the_right_champion(team: Team) -> None:
    """Two green months at once, one on each worker, their runs overlapping: the promotion
    lock (a Prefect global concurrency limit, shared through the server only) lets one
    decision at a time, so production is what the later one left, and a second promotion
    says production changed under it."""
    registry = team.registry()
    before = len(registry.versions("green"))
    files = drop_at_once(team.watcher_site, [("green", "2022-07"), ("green", "2022-08")])
    runs = [found[0] for found in wait_until_finished(team.api_url, files, 240).values()]
    assert all(run.state is not None and run.state.is_completed() for run in runs)
    by_worker = team.worker_of_runs()
    assert {by_worker[str(run.id)] for run in runs} == set(WORKERS)
    first, second = sorted(runs, key=lambda run: run.start_time or 0)
    assert first.end_time and second.start_time and second.start_time < first.end_time

    challengers = registry.versions("green")[before:]
    assert len(challengers) == 2
    outcomes = [registry.client.get_run(version.run_id).data.tags for version in challengers]
    champion = registry.production("green")
    assert champion is not None
    assert champion.name in {tags["production_after"] for tags in outcomes}
    promoted = [tags for tags in outcomes if tags["promoted"] == "true"]
    if len(promoted) == 2:  # the later decision judged against the earlier one's outcome
        assert any("production changed during this run" in t["promotion_reason"] for t in promoted)
    assert_no_secret_anywhere(team)


def test_a_worker_killed_mid_run_crashes_it_and_the_other_worker_trains_it_once(
    team: Team,
) -> None:
    """The machine of a worker dies (the worker and its flow-run process, SIGKILL): the
    server marks the run Crashed once its heartbeats stop, the watcher hands the file off
    again, and the other worker trains it."""
    [path] = drop_at_once(team.watcher_site, [("green", "2022-09")], rows=400_000)

    def loaded() -> int | None:
        """The run's process once the server knows a task of it finished: its first
        heartbeat (sent at the start, through the same event stream) has arrived, and
        training (seconds on 400,000 trips, after the registry is opened) has not ended."""
        found = runs_by_file(team.api_url, [path])[path]
        if not found:
            return None
        tasks = task_runs_of(team.api_url, found[0].id)
        if not any(t.state is not None and t.state.is_completed() for t in tasks):
            return None
        assert not any(
            t.name.startswith("train-challenger") for t in tasks if t.state_name == "Completed"
        )
        processes = flow_run_processes(found[0].id)
        return processes[0] if processes else None

    pid = wait_until(loaded, 240, f"{path.name}'s run under way on a worker")
    victim = next(
        name for name, worker in team.workers.items() if pid in set(descendants(worker.pid))
    )
    survivor = next(name for name in WORKERS if name != victim)
    for doomed in (*descendants(team.workers[victim].pid), team.workers[victim].pid):
        os.kill(doomed, signal.SIGKILL)
    team.workers[victim].process.wait()

    runs = wait_until_finished(team.api_url, [path], SILENT_RUN_SECONDS + 240, runs_per_file=2)[
        path
    ]
    assert [run.state_name for run in runs] == ["Crashed", "Completed"], runs
    by_worker = team.worker_of_runs()
    assert by_worker[str(runs[0].id)] == victim
    assert by_worker[str(runs[1].id)] == survivor
    trained = [
        t
        for run in runs
        for t in task_runs_of(team.api_url, run.id)
        if t.name.startswith("train-challenger") and t.state_name == "Completed"
    ]
    assert len(trained) == 1, [(t.name, t.state_name) for t in trained]
    september = [
        v for v in team.registry().versions("green") if v.card.validation_month == "2022-09"
    ]
    assert len(september) == 1
    assert_no_secret_anywhere(team)
