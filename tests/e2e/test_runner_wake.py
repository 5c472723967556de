"""The watcher of a real `taxiops up` wakes its runner after a hand-off: with the runner's
own poll ten minutes apart, a dropped month still starts within seconds."""

from __future__ import annotations

import time
from pathlib import Path

from taxiops.app.server import LocalPrefectServer
from tests.e2e.harness import runs_by_file, served_site, wait_until

SLOW_POLL_SECONDS = 600  # far longer than the test waits: only the wake-up can start the run


def test_a_handed_off_file_starts_without_waiting_for_the_runners_poll(
    prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    env = {"TAXIOPS_RUNNER_POLL_SECONDS": str(SLOW_POLL_SECONDS)}
    with served_site(prefect_server.api_url, tmp_path, env=env) as served:
        dropped = time.monotonic()
        path = served.site.drop("green", "2023-01")

        def started() -> bool:
            runs = runs_by_file(served.site.api_url, [path])[path]
            return any(r.state is not None and not r.state.is_scheduled() for r in runs)

        wait_until(started, 60, f"the run of {path.name} to leave Scheduled")
        took = time.monotonic() - dropped
    assert took < SLOW_POLL_SECONDS / 10
    print(f"\ndrop -> run started with the runner polling every {SLOW_POLL_SECONDS} s: {took:.1f}s")
