"""The embedded Prefect server of a real `taxiops up` SIGKILLed while a run trains: restarted
on the same port and database, the run in flight ends, its file is accounted for, an alert
arrives. A server that keeps dying ends `taxiops up` with exit code 2 and one line.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from taxiops.app.server import is_healthy
from taxiops.intake import LedgerEntry
from taxiops.notify import SlackInbox
from tests.e2e.harness import (
    UP_READY,
    embedded_site,
    runs_by_file,
    task_runs_of,
    the_embedded_server,
    wait_until,
    wait_until_finished,
)

BIG_ROWS = 400_000  # training lasts a few seconds: long enough to kill the server inside it
# This 2-core machine runs several test sessions at once: a first start took over 120 s.
STARTUP_TIMEOUT = 360.0
RECOVER_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0
TRAIN_TASK = "train-challenger"
SERVER_STOPPED = "the local Prefect server stopped"
GIVE_UP_TIMEOUT = 180.0


def test_server_killed_while_training_is_restarted_and_the_run_accounted_for(
    tmp_path: Path,
) -> None:
    with SlackInbox(echo=False) as inbox:
        site = embedded_site(tmp_path / "site", inbox.url)
        with site.start("up") as up:
            up.wait_for_log(UP_READY, timeout=STARTUP_TIMEOUT)
            path = site.drop("green", "2023-01", rows=BIG_ROWS)
            run = wait_until(
                lambda: next(reversed(runs_by_file(site.api_url, [path])[path]), None),
                RUN_TIMEOUT,
                f"a run of {path.name}",
            )

            def training() -> bool:
                return any(
                    t.name.startswith(TRAIN_TASK) and t.state is not None and t.state.is_running()
                    for t in task_runs_of(site.api_url, run.id)
                )

            wait_until(training, RUN_TIMEOUT, f"{run.name} to be training", every=0.1)
            old_server = the_embedded_server(up.pid)
            os.kill(old_server, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: not is_healthy(site.api_url), 10, "the server to be gone")
            wait_until(
                lambda: is_healthy(site.api_url), RECOVER_TIMEOUT, "the server to answer again"
            )
            recovered_after = time.monotonic() - killed_at
            assert up.alive
            assert the_embedded_server(up.pid) != old_server
            assert len(up.log_lines(SERVER_STOPPED)) == 1, up.log()[-3000:]

            runs = wait_until_finished(site.api_url, [path], RUN_TIMEOUT)[path]
            first = runs[0]
            assert first.state is not None
            assert first.state.is_completed() or first.state.is_crashed(), first.state
            ended_after = time.monotonic() - killed_at

            def accounted() -> LedgerEntry | None:
                entry = site.entry(path)
                return entry if entry is not None and entry.state.is_finished else None

            entry = wait_until(accounted, RUN_TIMEOUT, f"{path.name} final in the ledger")
            status = site.run("status")
            assert status.returncode == 0, status.stderr
            assert path.name in status.stdout and entry.state.value in status.stdout

            def alerted() -> bool:
                return any(
                    "green 2023-01" in (m.header or "") or run.name in (m.text or "")
                    for m in inbox.messages
                )

            wait_until(alerted, RUN_TIMEOUT, f"an alert about {path.name}")
            alert = next(m.header for m in inbox.messages if m.header)
            assert up.alive
            outage_lines = len(up.log(all_runs=True).splitlines())
    print(
        f"\nserver SIGKILLed mid-training: answers again after {recovered_after:.1f}s; "
        f"run in flight {first.name}: {first.state.name} after {ended_after:.1f}s "
        f"({len(runs)} run(s): {[r.state.name if r.state else '?' for r in runs]}); "
        f"ledger: {entry.state.value}; first alert: {alert!r}; up log: {outage_lines} lines"
    )


def test_server_that_keeps_dying_ends_up_with_exit_code_2_and_one_line(tmp_path: Path) -> None:
    with SlackInbox(echo=False) as inbox:
        site = embedded_site(tmp_path / "site", inbox.url)
        port = int(site.api_url.rsplit(":", 1)[1].removesuffix("/api"))
        with site.start("up") as up, socket.socket() as squatter:
            up.wait_for_log(UP_READY, timeout=STARTUP_TIMEOUT)
            server = the_embedded_server(up.pid)
            os.kill(server, signal.SIGKILL)
            # Another listener takes the port: every restart fails to bind it.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            wait_until(lambda: _bound(squatter, port), 10, f"port {port} to be free")
            squatter.listen()
            started = time.monotonic()
            code = up.process.wait(GIVE_UP_TIMEOUT)
            gave_up_after = time.monotonic() - started
            output = up.log().rstrip().splitlines()
    assert code == 2, "\n".join(output[-40:])
    last = output[-1]
    assert last.startswith("taxiops: the local Prefect server failed"), last
    assert last.endswith("; taxiops up stopped"), last
    assert "address" in last.lower() or "in use" in last.lower(), last
    print(f"\ngave up after {gave_up_after:.1f}s with exit code {code}: {last}")


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True
