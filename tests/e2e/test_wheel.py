"""taxiops installed from its own wheel into a fresh venv, run from a folder outside the checkout.

The wheel is built from the sdist (`uv build`), so both carry `flows/` and `automations/`.
The venv gets the versions of this test's venv (as constraints), so uv installs them from
its cache and the client matches the session's Prefect server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from taxiops.app.server import LocalPrefectServer
from tests.stores import seed_home

ROOT = Path(__file__).resolve().parents[2]
_PRIVATE_ENV_PREFIXES = ("TAXIOPS_", "SLACK_", "PREFECT_API_", "VIRTUAL_ENV", "PYTHONPATH")


def _uv() -> str:
    """uv from this venv (a dev dependency), else from PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        pytest.fail("uv is neither in this venv nor on PATH: run `make install`")
    return found


def _run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


@dataclass(frozen=True)
class InstalledWheel:
    """A venv holding taxiops from its wheel, and a folder outside the checkout to run in."""

    venv: Path
    workdir: Path

    @property
    def taxiops(self) -> str:
        return str(self.venv / "bin" / "taxiops")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def environment(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        env.update(TAXIOPS_HOME=str(self.workdir / "home"), DO_NOT_TRACK="1")
        env.update(more)
        return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    _run([_uv(), "build", "--quiet", "--out-dir", str(dist), str(ROOT)], cwd=root)
    (built,) = dist.glob("taxiops-*.whl")
    pins = _run([_uv(), "pip", "freeze", "--exclude-editable", "-p", sys.executable], cwd=root)
    constraints = root / "constraints.txt"
    constraints.write_text(pins)
    venv = root / "venv"
    _run([_uv(), "venv", "--quiet", "-p", sys.executable, str(venv)], cwd=root)
    _run(
        [_uv(), "pip", "install", "--quiet", "--compile-bytecode", "-p", str(venv / "bin" / "python"),
         "-c", str(constraints), str(built)],
        cwd=root,
    )  # fmt: skip
    workdir = root / "elsewhere"
    workdir.mkdir()
    return InstalledWheel(venv, workdir)


def test_the_wheel_carries_flows_and_automations(wheel: InstalledWheel) -> None:
    where = _run(
        [wheel.python, "-c",
         "from taxiops.bundled import bundled_root; from taxiops.notify.automations import"
         " AUTOMATIONS_DIR as a; print(bundled_root()); print(len(list(a.glob('*.yaml'))))"],
        cwd=wheel.workdir, env=wheel.environment(),
    ).split()  # fmt: skip
    assert Path(where[0]).is_relative_to(wheel.venv.resolve())
    assert (Path(where[0]) / "flows" / "train.py").is_file()
    assert int(where[1]) == len(list((ROOT / "automations").glob("*.yaml")))
    help_text = _run([wheel.taxiops, "automations", "apply", "--help"], cwd=wheel.workdir)
    assert "notifier block" in help_text


def test_served_deployments_point_into_the_installed_package(wheel: InstalledWheel) -> None:
    # What `taxiops up` registers; the runner's flow-run subprocesses load these entrypoints.
    entrypoints = _run(
        [wheel.python, "-c",
         "import asyncio; from taxiops.pipeline.deployments import served_deployments;"
         " from taxiops.settings import load_settings;"
         " [print(d.entrypoint) for d in asyncio.run(served_deployments(load_settings()))]"],
        cwd=wheel.workdir, env=wheel.environment(),
    ).split()  # fmt: skip
    assert len(entrypoints) == 2
    for entrypoint in entrypoints:
        path = Path(entrypoint.partition(":")[0])
        assert path.is_absolute() and path.is_relative_to(wheel.venv.resolve()) and path.is_file()


def test_train_json_and_status_from_outside_the_checkout(
    wheel: InstalledWheel, prefect_server: LocalPrefectServer
) -> None:
    env = wheel.environment(PREFECT_API_URL=prefect_server.api_url)
    for month in ("2023-01", "2023-02"):
        _run([wheel.taxiops, "synth", "months", "--month", month], cwd=wheel.workdir, env=env)
    out = _run(
        [wheel.taxiops, "train", "--json", "months/green_tripdata_2023-02.parquet"],
        cwd=wheel.workdir, env=env,
    )  # fmt: skip
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["taxi_type"] == "green" and summary["month"] == "2023-02"
    assert summary["train_months"] == ["2023-01"]
    assert summary["promoted"] is True and summary["model_version"] == "v1"
    assert 0 < summary["rmse"] < 20 and summary["train_rows"] > 0
    status = _run([wheel.taxiops, "status"], cwd=wheel.workdir, env=env)
    assert "taxi-duration-green@champion: v1 " in status


def test_up_serves_and_trains_a_dropped_month_from_outside_the_checkout(
    wheel: InstalledWheel,
) -> None:
    """`taxiops up` from the wheel, with its own embedded server: its runner's flow-run
    processes load the flow from the installed package (a wheel without `flows/` failed
    there with `ScriptError: ... flows/train.py`)."""
    from taxiops.app.server import free_port
    from taxiops.intake import FileState, Ledger

    incoming = wheel.workdir / "up-incoming"
    env = wheel.environment(
        TAXIOPS_HOME=str(wheel.workdir / "up-home"),
        TAXIOPS_INCOMING_DIR=str(incoming),
        TAXIOPS_SERVER_PORT=str(free_port()),
        TAXIOPS_MLFLOW_UI_PORT=str(free_port()),  # the wheel's MLflow UI is served too
        # The monthly schedule (06:00 on the 2nd) must not start a run of its own in here.
        TAXIOPS_SCHEDULE_CRON="0 6 1 1 *",
    )
    # Stores from the blank copies: tests/e2e/test_up.py's demo starts on new ones.
    seed_home(wheel.workdir / "up-home")
    log_path = wheel.workdir / "up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [wheel.taxiops, "up"], cwd=wheel.workdir, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait(lambda: "taxiops is up" in log_path.read_text(), 180, "taxiops up", process, log_path)
        staging = wheel.workdir / "up-staging"
        _run([wheel.taxiops, "synth", str(staging), "--month", "2023-03"], cwd=wheel.workdir)
        (staged,) = staging.glob("*.parquet")
        staged.rename(incoming / staged.name)
        ledger = Ledger(wheel.workdir / "up-home" / "ledger.sqlite3")
        _wait(
            lambda: [e.state for e in ledger.entries()] == [FileState.SUCCEEDED],
            180,
            "the dropped month trained",
            process,
            log_path,
        )
        process.send_signal(signal.SIGINT)
        _wait(lambda: process.poll() is not None, 90, "exit after Ctrl-C", process, log_path)
        assert process.returncode == 0, log_path.read_text()[-3000:]
        assert "Error logging to API" not in log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait(
    done: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {what} (exit {process.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
