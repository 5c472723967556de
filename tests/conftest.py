"""Session fixtures: one real Prefect server (SQLite in a temp dir) for the whole run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from taxiops.app.server import LocalPrefectServer, free_port
from taxiops.settings import Settings
from tests.stores import seed_mlflow_store, seed_prefect_store

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# The longest test files, longest first. `make test` runs files whole on two xdist workers
# (`--dist loadfile`), which take files in collection order as they become free: started
# last, the team-mode module alone (~3.5 min) would keep one worker busy long after the
# other ran out of files.
LONGEST_FILES = ("tests/e2e/test_team_mode.py", "tests/e2e/test_alert_delivery.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the `LONGEST_FILES` first, each file's tests in their own order."""

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.partition("::")[0]
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    """A real Prefect server for the session; the API URL is set for this process and children."""
    state_dir = tmp_path_factory.mktemp("prefect-server")
    seed_prefect_store(state_dir)  # one migration per process, for this and later servers
    server = LocalPrefectServer(state_dir=state_dir, port=free_port())
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        from taxiops.app.service import flush_to_api

        flush_to_api()  # queued logs and events reach the server before it goes
        server.stop()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose state and incoming folder live in this test's tmp_path."""
    home = tmp_path / "home"
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    monkeypatch.setenv("TAXIOPS_HOME", str(home))
    monkeypatch.setenv("TAXIOPS_INCOMING_DIR", str(incoming))
    monkeypatch.setenv("TAXIOPS_TASK_RETRY_DELAY_SECONDS", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the local store under home
    monkeypatch.chdir(tmp_path)
    seed_mlflow_store(home)
    return Settings()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real NYC TLC months beside the project; skips when absent."""
    if not (SHARED_DATA / "green_tripdata_2021-01.parquet").is_file():
        pytest.skip(f"real TLC data not found in {SHARED_DATA}")
    return SHARED_DATA
