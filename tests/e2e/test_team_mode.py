"""Team mode end to end (README, "Team mode"; tests/team.py brings it up): a real
PostgreSQL, `taxiops server` with basic auth, two process workers after
`prefect deploy --all`, and `taxiops watch`, each a process of its own with a home of its
own, sharing nothing but the servers and the incoming folder.

One team for the module; the tests run in file order and the last one kills a worker.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taxiops.tripfile import TaxiType
from tests.e2e.harness import (
    descendants,
    flow_run_processes,
    runs_by_file,
    task_runs_of,
    wait_until,
    wait_until_each_ran_once,
    wait_until_finished,
)
from tests.postgres import INSTALL_HINT, postgres_bin_dir
from tests.team import (
    PASSWORD,
    SILENT_RUN_SECONDS,
    USER,
    Team,
    drop_at_once,
    running_team,
    worker_names,
)

WORKERS = tuple(worker_names(2))


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    if postgres_bin_dir() is None:
        why = f"no PostgreSQL: {INSTALL_HINT} (make test does, as root)"
        if "postgresql" in os.environ.get("TAXIOPS_TESTS_REQUIRE", "").split(","):
            pytest.fail(why)
        pytest.skip(why)
    with running_team(tmp_path_factory.mktemp("team"), workers=len(WORKERS)) as team:
        yield team


def assert_no_secret_anywhere(team: Team) -> None:
    """Neither the team's password nor PostgreSQL's in any log or any live process's argv."""
    roles = [team.server, team.watcher, *(w for w in team.workers.values() if w.alive)]
    argvs = [
        cmdline.read_bytes().decode(errors="replace")
        for role in roles
        for pid in (role.pid, *role.children())
        if (cmdline := Path(f"/proc/{pid}/cmdline")).exists()
    ]
    logs = team.logs()
    for secret in (PASSWORD, team.postgres.password):
        assert secret not in logs
        assert not [argv for argv in argvs if secret in argv]


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
    # The decisions' order, from the server: when each run's promote-if-better ended.
    decided_at = {
        str(run.id): max(
            t.end_time
            for t in task_runs_of(team.api_url, run.id)
            if t.name.startswith("promote-if-better") and t.end_time is not None
        )
        for run in runs
    }
    later_run = max(decided_at, key=lambda run_id: decided_at[run_id])
    later = next(tags for tags in outcomes if tags["prefect.flow_run_id"] == later_run)
    assert champion.name == later["production_after"]
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
