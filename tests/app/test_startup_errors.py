"""Every start-up mistake is one line on stderr naming the setting, exit code 2, no traceback.

Each case runs the real `taxiops` command in a fresh process with its own environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taxiops.app.server import free_port

Setup = Callable[[Path], dict[str, str]]


def _run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TAXIOPS_", "PREFECT_"))}
    clean.update(TAXIOPS_HOME=str(cwd / "home"), TAXIOPS_INCOMING_DIR=str(cwd / "incoming"))
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "taxiops", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TAXIOPS_SERVE_LIMIT", "abc"),
        ("TAXIOPS_WATCH_POLLING", "maybe"),
        ("TAXIOPS_SERVER_PORT", "70000"),
    ],
)
@pytest.mark.parametrize("source", ["environment", ".env"])
def test_a_bad_value_names_its_variable(
    tmp_path: Path, variable: str, value: str, source: str
) -> None:
    env = {variable: value} if source == "environment" else {}
    if source == ".env":
        (tmp_path / ".env").write_text(f"{variable}={value}\n")
    line = _assert_one_line(_run(tmp_path, env, "status"), variable, repr(value))
    assert "environment or .env" in line


@pytest.mark.parametrize("variable", ["TAXIOPS_INCOMING_DIR", "TAXIOPS_HOME"])
@pytest.mark.parametrize("command", [["up"], ["demo"], ["watch"]])
def test_a_folder_that_is_a_file(tmp_path: Path, variable: str, command: list[str]) -> None:
    (tmp_path / "not-a-dir").write_text("a file")
    done = _run(tmp_path, {variable: str(tmp_path / "not-a-dir")}, *command)
    line = _assert_one_line(done, variable, "is a file, not a folder")
    assert "point" in line


def test_a_home_that_is_a_file_stops_train_too(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file")
    done = _run(tmp_path, {"TAXIOPS_HOME": str(tmp_path / "not-a-dir")}, "train", "x.parquet")
    _assert_one_line(done, "TAXIOPS_HOME", "is a file")


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A real read-only filesystem (tmpfs mounted ro); skips where mounting is refused."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_unwritable_home(tmp_path: Path, read_only_folder: Path) -> None:
    done = _run(tmp_path, {"TAXIOPS_HOME": str(read_only_folder / "home")}, "up")
    _assert_one_line(done, "TAXIOPS_HOME", "cannot write there", "Read-only file system")


def test_a_port_in_use_names_the_setting(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = _run(tmp_path, {"TAXIOPS_SERVER_PORT": str(port)}, "up")
    line = _assert_one_line(done, f"TAXIOPS_SERVER_PORT={port}", "in use")
    assert "--port" not in line


@pytest.mark.parametrize(
    "command", [["up"], ["demo"], ["train", "x.parquet"], ["automations", "apply"]]
)
def test_a_prefect_api_url_that_does_not_answer(tmp_path: Path, command: list[str]) -> None:
    url = f"http://user:s3cret-pass@127.0.0.1:{free_port()}/api"
    done = _run(tmp_path, {"PREFECT_API_URL": url}, *command)
    line = _assert_one_line(done, "PREFECT_API_URL=", "does not answer")
    assert "s3cret-pass" not in done.stderr + done.stdout
    assert line.startswith("taxiops: ")


def test_a_tracking_uri_mlflow_cannot_open_names_the_variable_not_its_secret(
    tmp_path: Path,
) -> None:
    done = _run(tmp_path, {"MLFLOW_TRACKING_URI": "bogus://user:s3cret@example"}, "status")
    line = _assert_one_line(done, "MLFLOW_TRACKING_URI", "'bogus' is not a store MLflow knows")
    assert "Value error" not in line
    assert "s3cret" not in done.stdout + done.stderr and not line.startswith("taxiops: TAXIOPS_")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://user:s3cret@127.0.0.1:{port}", "does not answer /health"),
        ("postgresql://user:s3cret@127.0.0.1:{port}/mlflow", "database server does not answer"),
    ],
    ids=["tracking-server", "database"],
)
@pytest.mark.parametrize("command", [["up"], ["train", "x.parquet"], ["status"]])
def test_a_tracking_store_that_does_not_answer_stops_the_start(
    tmp_path: Path, uri: str, problem: str, command: list[str]
) -> None:
    configured = uri.format(port=free_port())  # nothing listens there
    done = _run(tmp_path, {"MLFLOW_TRACKING_URI": configured}, *command)
    line = _assert_one_line(done, "MLFLOW_TRACKING_URI=", "***@127.0.0.1", problem)
    assert "unset MLFLOW_TRACKING_URI" in line and "s3cret" not in done.stdout + done.stderr


def test_status_on_a_new_home_creates_no_store_and_prints_nothing_on_stderr(
    tmp_path: Path,
) -> None:
    done = _run(tmp_path, {}, "status")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "no files seen yet" in done.stdout
    assert not (tmp_path / "home" / "mlflow.db").exists()


@pytest.mark.parametrize("command", [["server"], ["up"]])
def test_servers_beyond_loopback_without_credentials_do_not_start(
    tmp_path: Path, command: list[str]
) -> None:
    done = _run(tmp_path, {"TAXIOPS_SERVER_HOST": "0.0.0.0"}, *command)
    line = _assert_one_line(done, "TAXIOPS_SERVER_HOST=0.0.0.0", "PREFECT_API_AUTH_STRING")
    assert "beyond loopback" in line
    assert not (tmp_path / "home" / "server").exists()  # no server was started


@pytest.mark.parametrize(
    ("auth", "problem"),
    [("no-colon-here-at-all", "USER:PASSWORD"), ("team:short-pw", "12 characters")],
)
def test_a_malformed_auth_string_is_named_without_its_value(
    tmp_path: Path, auth: str, problem: str
) -> None:
    done = _run(tmp_path, {"PREFECT_API_AUTH_STRING": auth}, "server")
    line = _assert_one_line(done, "PREFECT_API_AUTH_STRING", problem)
    assert auth not in done.stderr + done.stdout and "short-pw" not in line
