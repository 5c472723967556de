"""Faults of the watcher: SIGKILL in the middle of a burst, and two watchers on one folder.

Against the session server: one `taxiops up --no-watch` serves the deployments for the
module, and each test runs its own `taxiops watch` processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taxiops.app.server import LocalPrefectServer
from taxiops.intake import FileState
from taxiops.tripfile import TaxiType
from tests.e2e.harness import (
    HANDED_OFF,
    WATCH_READY,
    Site,
    TaxiopsProcess,
    served_site,
    wait_until,
    wait_until_each_ran_once,
)

RUN_TIMEOUT = 180.0
BURST: list[tuple[TaxiType, str]] = [
    (taxi_type, f"2022-{month:02d}") for taxi_type in ("green", "yellow") for month in range(1, 3)
]


@pytest.fixture(scope="module")
def api_url(
    prefect_server: LocalPrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The session server, with `taxiops up --no-watch` serving the deployments."""
    with served_site(prefect_server.api_url, tmp_path_factory.mktemp("runner"), "--no-watch"):
        yield prefect_server.api_url


def handed_off(watcher: TaxiopsProcess) -> dict[str, str]:
    """File name -> flow run id, from the watcher's hand-off log lines (every start)."""
    found = {}
    for line in watcher.log_lines(HANDED_OFF):
        message = line.split(" - ", 1)[1]
        name = message.split(":", 1)[0]
        found[name] = message.rsplit("(", 1)[1].rstrip(")")
    return found


def test_watcher_killed_mid_burst_then_restarted_runs_every_file_once(
    api_url: str, tmp_path: Path
) -> None:
    site = Site(tmp_path, api_url)
    with site.start("watch") as watcher:
        watcher.wait_for_log(WATCH_READY)
        first = [site.drop(taxi_type, month) for taxi_type, month in BURST[:3]]
        watcher.wait_for_log(HANDED_OFF, timeout=60, count=2)
        watcher.kill()
        at_kill = {e.path.name: e.state for e in site.ledger().entries()}
        # The rest of the burst lands while no watcher runs.
        rest = [site.drop(taxi_type, month) for taxi_type, month in BURST[3:]]

        watcher.start()
        runs = wait_until_each_ran_once(api_url, first + rest, timeout=RUN_TIMEOUT)
        entries = [site.wait_for_state(path, FileState.SUCCEEDED) for path in first + rest]

    handed = sum(state is not FileState.SEEN for state in at_kill.values())
    assert 2 <= handed < len(BURST), at_kill
    assert len(runs) == len(BURST) == len(site.ledger().entries())
    assert [(e.runs, e.flow_run_id) for e in entries] == [
        (1, str(runs[path].id)) for path in first + rest
    ]


def test_two_watchers_on_one_ledger_hand_each_file_off_once(api_url: str, tmp_path: Path) -> None:
    site = Site(tmp_path, api_url)
    with site.start("watch", name="watch-a") as a, site.start("watch", name="watch-b") as b:
        a.wait_for_log(WATCH_READY)
        b.wait_for_log(WATCH_READY)
        files = [site.drop(taxi_type, month) for taxi_type, month in BURST[:3]]
        runs = wait_until_each_ran_once(api_url, files, timeout=RUN_TIMEOUT)

    # The guard is the ledger claim: each file was handed off by exactly one watcher.
    by_a, by_b = handed_off(a), handed_off(b)
    assert by_a.keys().isdisjoint(by_b.keys()), (by_a, by_b)
    assert {**by_a, **by_b} == {p.name: str(run.id) for p, run in runs.items()}


def test_two_watchers_with_separate_ledgers_rely_on_the_idempotency_key(
    api_url: str, tmp_path: Path
) -> None:
    site = Site(tmp_path, api_url)
    with (
        site.start("watch", name="watch-a", TAXIOPS_HOME=str(tmp_path / "home-a")) as a,
        site.start("watch", name="watch-b", TAXIOPS_HOME=str(tmp_path / "home-b")) as b,
    ):
        a.wait_for_log(WATCH_READY)
        b.wait_for_log(WATCH_READY)
        files = [site.drop(taxi_type, month) for taxi_type, month in BURST[2:]]
        runs = wait_until_each_ran_once(api_url, files, timeout=RUN_TIMEOUT)
        expected = {p.name: str(run.id) for p, run in runs.items()}
        # Both hand every file off and are both given the one run its SHA-256 keys.
        wait_until(lambda: handed_off(a) == handed_off(b) == expected, 10, "both hand-offs")
