"""Fixtures for flow tests: synthetic months in a folder, and reads from the real Prefect API."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import TaskRun

from taxiops.ml import write_synth_month
from taxiops.settings import Settings
from taxiops.tripfile import Month

SYNTH_ROWS = 6_000


@pytest.fixture
def months(settings: Settings, prefect_server: Any) -> dict[str, Path]:
    """Two synthetic green months (2023-01, 2023-02) in the incoming folder."""
    return {
        label: write_synth_month(
            settings.incoming_dir, "green", Month.parse(label), rows=SYNTH_ROWS, seed=i
        )
        for i, label in enumerate(["2023-01", "2023-02"])
    }


def task_runs_of(flow_run_id: str | UUID) -> list[TaskRun]:
    """Every task run of a flow run, as the server recorded it."""
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))]))
        )


def artifact_keys_of(flow_run_id: str | UUID) -> set[str]:
    """Keys of the artifacts a flow run created."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))])
            )
        )
    return {a.key for a in artifacts if a.key}
