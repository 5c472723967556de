"""The MLflow tracking server fails while a run registers its challenger: a short outage is
retried and the run registers one version; one that outlasts the retries fails the run
clearly, registers nothing and leaves production as it was.

A real `mlflow server` (SQLite store, artifacts in a local folder) behind a loopback proxy
that answers `model-versions/create` with HTTP 503, as a tracking server behind a load
balancer does while it restarts: the run has been logged, the version not yet created.
MLflow's own HTTP retries are off (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`), so what is tested
are the task's retries (`TAXIOPS_TASK_RETRIES`, default 3; no delay in tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flows.train import train_duration_model
from mlflow import MlflowClient
from prefect.client.schemas.objects import State

from taxiops.app.server import LocalMlflowServer, LocalPrefectServer, free_port
from taxiops.errors import TaskFailedError
from taxiops.ml import write_synth_month
from taxiops.registry import ModelRegistry
from taxiops.settings import Settings
from taxiops.tripfile import Month, TaxiType
from tests.e2e.harness import task_runs_of
from tests.faulty_proxy import FaultyProxy

REGISTER_TASK = "register-challenger"
CREATE_VERSION = "/api/2.0/mlflow/model-versions/create"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    server = LocalMlflowServer(
        state_dir=root,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifacts_dir=root / "artifacts",
        port=free_port(),
    )
    with server:
        yield server


@pytest.fixture
def proxy(
    mlflow_server: LocalMlflowServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultyProxy]:
    """The tracking server behind a proxy, as this test's `MLFLOW_TRACKING_URI`."""
    with FaultyProxy(mlflow_server.ui_url).running() as running:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", running.url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield running


def train(settings: Settings, taxi_type: TaxiType) -> State[Any]:
    month = write_synth_month(settings.incoming_dir, taxi_type, Month(2023, 1), rows=2_000, seed=1)
    state: State[Any] = train_duration_model(new_file=str(month), return_state=True)
    return state


def register_runs(api_url: str, state: State[Any]) -> list[int]:
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    tasks = task_runs_of(api_url, flow_run_id)
    return [t.run_count for t in tasks if t.name.startswith(REGISTER_TASK)]


def test_a_short_outage_while_registering_is_retried_and_registers_one_version(
    settings: Settings, prefect_server: LocalPrefectServer, proxy: FaultyProxy
) -> None:
    proxy.fail(CREATE_VERSION, times=2)

    state = train(settings, "green")

    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.promoted and summary.model_version == "v1"
    assert len(proxy.failed) == 2
    assert register_runs(prefect_server.api_url, state) == [3]
    registry = ModelRegistry.from_settings(Settings())
    assert [v.name for v in registry.versions("green")] == ["v1"]
    production = registry.production("green")
    assert production is not None and production.run_id == summary.mlflow_run_id
    # The retries found the run the first attempt had logged instead of logging another.
    client = MlflowClient(tracking_uri=proxy.url)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.taxi_type = 'green'",
    )
    assert [r.info.run_id for r in runs] == [summary.mlflow_run_id]


def test_an_outage_longer_than_the_retries_fails_the_run_and_registers_nothing(
    settings: Settings, prefect_server: LocalPrefectServer, proxy: FaultyProxy
) -> None:
    proxy.fail(CREATE_VERSION, times=None)

    state = train(settings, "yellow")

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TaskFailedError) and error.task == REGISTER_TASK
    assert "503" in str(error), str(error)
    retries = Settings().task_retries
    assert register_runs(prefect_server.api_url, state) == [retries + 1]
    assert len(proxy.failed) == retries + 1
    registry = ModelRegistry.from_settings(Settings())
    assert registry.versions("yellow") == [] and registry.production("yellow") is None
