"""A flow run's process killed mid-training: Crashed, alerted, production untouched, retried.

Against the session server: one `taxiops up --no-watch` (the runner, alerts to a local
Slack inbox) for the module; each test runs its own `taxiops watch`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import FlowRun

from taxiops.app.server import LocalPrefectServer
from taxiops.intake import FileState
from taxiops.notify import InboxMessage, SlackInbox
from taxiops.registry import ModelRegistry
from taxiops.settings import load_settings
from tests.e2e.harness import (
    WATCH_READY,
    ServedSite,
    Site,
    forked_run_processes,
    runs_by_file,
    served_site,
    task_runs_of,
    wait_until,
    wait_until_each_ran_once,
    wait_until_finished,
)

# Training on this many synthetic trips lasts 1.5-2 s on one idle core: long enough to
# see the train task Running on the server and kill the run inside it.
BIG_ROWS = 400_000
RUN_TIMEOUT = 120.0
TRAIN_TASK = "train-challenger"


@pytest.fixture(scope="module")
def runner(
    prefect_server: LocalPrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedSite]:
    with served_site(
        prefect_server.api_url, tmp_path_factory.mktemp("runner"), "--no-watch"
    ) as served:
        yield served


def the_run_of(api_url: str, path: Path) -> FlowRun | None:
    runs = runs_by_file(api_url, [path])[path]
    return runs[-1] if runs else None


def kill_while_training(runner: ServedSite, path: Path) -> FlowRun:
    """Wait until the file's run is inside its train task, then SIGKILL the run's process."""
    api_url = runner.site.api_url
    run = wait_until(lambda: the_run_of(api_url, path), RUN_TIMEOUT, f"a run of {path.name}")

    def training() -> bool:
        return any(
            t.name.startswith(TRAIN_TASK) and t.state is not None and t.state.is_running()
            for t in task_runs_of(api_url, run.id)
        )

    wait_until(training, RUN_TIMEOUT, f"{run.name} to be training", every=0.1)
    processes = forked_run_processes(runner.up.pid)  # the only run of this runner
    assert len(processes) == 1, f"one process of flow run {run.id} expected: {processes}"
    os.kill(processes[0], signal.SIGKILL)
    return run


def crash_alert(inbox: SlackInbox, run: FlowRun) -> InboxMessage | None:
    for message in inbox.messages:
        if "crashed" in (message.header or "").lower() and run.name in (message.text or ""):
            return message
    return None


def registry_of(home: Path) -> tuple[str | None, list[str]]:
    """The champion and every version of the site's green model."""
    registry = ModelRegistry.from_settings(load_settings(home=home))
    production = registry.production("green")
    versions = [v.name for v in registry.versions("green")]
    return (None if production is None else production.name), versions


def test_flow_run_killed_mid_training_is_crashed_alerted_and_retried_by_hand(
    runner: ServedSite, tmp_path: Path
) -> None:
    api_url = runner.site.api_url
    site = Site(tmp_path, api_url, env={"TAXIOPS_RETRY_CRASHED_RUNS": "0"})
    with site.start("watch") as watcher:
        watcher.wait_for_log(WATCH_READY)
        earlier = site.drop("green", "2023-01", rows=BIG_ROWS)
        wait_until_each_ran_once(api_url, [earlier], timeout=RUN_TIMEOUT, settle=0)
        production = registry_of(runner.site.home)
        assert production[0] is not None

        crashing = site.drop("green", "2023-02")  # trains on the big 2023-01
        run = kill_while_training(runner, crashing)

        crashed = wait_until_finished(api_url, [crashing], RUN_TIMEOUT)[crashing]
        assert [r.state_name for r in crashed] == ["Crashed"]
        alert = wait_until(lambda: crash_alert(runner.inbox, run), 60, "the crash alert")
        assert str(run.id) in " ".join(alert.button_urls)
        assert site.wait_for_state(crashing, FileState.CRASHED).runs == 1
        assert registry_of(runner.site.home) == production, "a crashed run registers nothing"

        retried = site.run("retry", crashing.name)
        assert retried.returncode == 0, retried.stderr
        assert "run 2" in retried.stdout
        runs = wait_until_finished(api_url, [crashing], RUN_TIMEOUT, runs_per_file=2)[crashing]
        entry = site.wait_for_state(crashing, FileState.SUCCEEDED)

    assert [r.state_name for r in runs] == ["Crashed", "Completed"]
    assert runs[1].name.endswith("-run2")
    assert (entry.runs, entry.flow_run_id) == (2, str(runs[1].id))
    again = site.run("retry", str(crashing))
    assert again.returncode == 2 and "succeeded" in again.stderr


def test_a_crashed_run_is_handed_off_again_on_its_own(runner: ServedSite, tmp_path: Path) -> None:
    api_url = runner.site.api_url
    site = Site(tmp_path, api_url, env={"TAXIOPS_RETRY_CRASHED_RUNS": "1"})
    with site.start("watch") as watcher:
        watcher.wait_for_log(WATCH_READY)
        crashing = site.drop("yellow", "2023-01", rows=BIG_ROWS)  # trains on 80% of itself
        kill_while_training(runner, crashing)
        runs = wait_until_finished(api_url, [crashing], RUN_TIMEOUT, runs_per_file=2)[crashing]
        entry = site.wait_for_state(crashing, FileState.SUCCEEDED)
        watcher.wait_for_log("automatic retry 1 of 1")

    assert [r.state_name for r in runs] == ["Crashed", "Completed"]
    assert entry.runs == 2
