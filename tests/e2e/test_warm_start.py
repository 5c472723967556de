"""`taxiops up` forks its runs from a warm fork server (TAXIOPS_WARM_START, the default),
or starts each as a new interpreter (TAXIOPS_WARM_START=false); both train a dropped month.

That the run itself is a fork of the server is shown where a run is caught mid-training:
tests/e2e/test_fault_flow_crash.py kills the one process `forked_run_processes` finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxiops.app.server import LocalPrefectServer
from tests.e2e.harness import (
    fork_server_processes,
    served_site,
    wait_until_each_ran_once,
)

RUN_TIMEOUT = 120.0


def maps_library(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_dropped_month_trains_with_warm_start_on_and_off(
    prefect_server: LocalPrefectServer, tmp_path: Path, warm: bool
) -> None:
    env = {"TAXIOPS_WARM_START": str(warm).lower()}
    with served_site(prefect_server.api_url, tmp_path, env=env) as served:
        if warm:  # `up` is ready once the fork server imported what a run needs
            at_ready = fork_server_processes(served.up.pid)
            assert len(at_ready) == 1 and maps_library(at_ready[0], "libxgboost"), at_ready
        path = served.site.drop("green", "2023-01")
        wait_until_each_ran_once(served.site.api_url, [path], RUN_TIMEOUT, settle=0)
        servers = fork_server_processes(served.up.pid)
        if warm:
            assert servers == at_ready  # the run was its fork, not a new server
        else:
            assert servers == []
