"""Fixtures for flow tests: synthetic months in a folder, and reads from the real Prefect API."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import TaskRun
from prefect.events import Event
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)

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


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], *, timeout: float = 20.0, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.2)
    return result


def events_since(since: datetime, resource_id: str, name_prefix: str = "") -> list[Event]:
    """Events about `resource_id` stored by the server since `since`, oldest first.

    The server stores events in batches (every few seconds), so callers poll.
    """
    event_filter = EventFilter(
        occurred=EventOccurredFilter.model_validate({"since": since}),
        event=EventNameFilter(prefix=[name_prefix] if name_prefix else None),
        resource=EventResourceFilter(id=[resource_id]),
    )
    with get_client(sync_client=True) as client:
        # The server API caps a page at 50; the client's default of 100 is refused (422).
        page = client.read_events(filter=event_filter, limit=50)
    return sorted(page.events, key=lambda event: event.occurred)


def log_messages_of(flow_run_id: str | UUID) -> list[str]:
    """Messages of every log line a flow run sent (queued lines are sent first)."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
        )
    return [log.message for log in logs]
