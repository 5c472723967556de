"""`taxiops up` as a user runs it: its own server, a dropped file, an alert, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taxiops.app.server import answers, free_port
from taxiops.ml import write_synth_month
from taxiops.notify import SlackInbox
from taxiops.tripfile import Month, TaxiType
from tests.e2e.harness import processes_below
from tests.stores import seed_home

STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0


def drop(folder: Path, taxi_type: TaxiType, month: str, seed: int) -> Path:
    """Write a month elsewhere, then move it in: it lands complete, as a copy tool would."""
    staged = write_synth_month(
        folder.parent / "staging", taxi_type, Month.parse(month), rows=3_000, seed=seed
    )
    return staged.rename(folder / staged.name)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def mlflow_ui_processes(pid: int) -> list[int]:
    """Pids of the `mlflow server` processes below `pid` that lead their own process group
    (the server, not its workers)."""
    return [p for p in processes_below(pid, "mlflow", "server") if os.getpgid(p) == p]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, SlackInbox, Path]]:
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    log_path = tmp_path / "up.log"
    with SlackInbox(echo=False) as inbox:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(
            TAXIOPS_HOME=str(tmp_path / "home"),
            TAXIOPS_INCOMING_DIR=str(incoming),
            TAXIOPS_SERVER_PORT=str(free_port()),
            TAXIOPS_MLFLOW_UI_PORT=str(free_port()),
            SLACK_WEBHOOK_URL=inbox.url,
        )
        # The demo test below starts on new stores, as a user's first run does.
        seed_home(tmp_path / "home")
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "taxiops", "up"],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        try:
            wait_for(lambda: "taxiops is up" in log_path.read_text(), STARTUP_TIMEOUT, "taxiops up")
            yield process, incoming, inbox, log_path
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_up_trains_dropped_files_alerts_and_stops_cleanly(
    service: tuple[subprocess.Popen[str], Path, SlackInbox, Path], tmp_path: Path
) -> None:
    process, incoming, inbox, log_path = service

    drop(incoming, "green", "2023-01", seed=1)
    drop(incoming, "green", "2023-02", seed=2)
    inbox.wait_for(2, timeout=RUN_TIMEOUT)

    headers = " ".join(m.header or "" for m in inbox.messages)
    assert "green 2023-01" in headers and "green 2023-02" in headers
    status = subprocess.run(
        [sys.executable, "-m", "taxiops", "status"],
        cwd=tmp_path,
        env={
            **os.environ,
            "TAXIOPS_HOME": str(tmp_path / "home"),
            "TAXIOPS_INCOMING_DIR": str(incoming),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "taxi-duration-green@champion: v" in status.stdout, status.stdout
    # The MLflow UI it announced serves the registry: the champion alias, by its REST API.
    announced = log_path.read_text().split("MLflow UI: ", 1)[1].split()[0]
    alias = httpx.get(
        f"{announced}/api/2.0/mlflow/registered-models/alias",
        params={"name": "taxi-duration-green", "alias": "champion"},
        timeout=10,
    )
    assert alias.status_code == 200, alias.text
    version = alias.json()["model_version"]["version"]
    assert f"taxi-duration-green@champion: v{version} " in status.stdout
    assert "/#/models/taxi-duration-green/versions/" in " ".join(
        " ".join(m.button_urls) for m in inbox.messages
    )

    # The MLflow UI is one of the children `taxiops up` keeps running: killed, it comes back.
    (ui,) = mlflow_ui_processes(process.pid)
    assert not processes_below(ui, "huey.bin.huey_consumer"), "MLflow's job runner is off"
    os.killpg(ui, signal.SIGKILL)  # its own session: the server and its workers
    wait_for(lambda: "the local MLflow UI stopped" in log_path.read_text(), 30, "the restart")
    wait_for(lambda: answers(f"{announced}/health"), 90, "the MLflow UI to answer again")
    assert mlflow_ui_processes(process.pid) != [ui]

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    assert "taxiops stopped." in log_path.read_text()
    assert "Error logging to API" not in log_path.read_text()  # flushed before the server stops
    wait_for(lambda: not group_alive(process.pid), 15, "every child of taxiops up to exit")


def test_demo_trains_sample_months_and_prints_alerts_without_slack(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("PREFECT_API_URL", "SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN", "TAXIOPS_APPRISE_URLS")
    }
    env.update(TAXIOPS_SERVER_PORT=str(free_port()), TAXIOPS_MLFLOW_UI_PORT=str(free_port()))
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taxiops", "demo", "--rows", "2000"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: log_path.read_text().count("── Slack webhook") >= 4,
            STARTUP_TIMEOUT + RUN_TIMEOUT,
            "four alerts printed by the local inbox",
        )
        output = log_path.read_text()
        assert "no SLACK_WEBHOOK_URL" in output
        assert (tmp_path / "data" / "incoming" / "yellow_tripdata_2023-02.parquet").exists()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        assert "taxiops demo stopped." in log_path.read_text()
        wait_for(lambda: not group_alive(process.pid), 15, "every child of taxiops demo to exit")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
