"""Watcher fixtures: fast settings, a recording submitter, services stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taxiops.intake import Backoff, Submitter, WatcherService
from taxiops.settings import Settings
from tests.intake.watcher_helpers import FAST_BACKOFF, RecordingSubmitter, ServiceFactory


@pytest.fixture
def watch_settings(settings: Settings) -> Settings:
    """Test settings with a short settle time and a short wait for incomplete files."""
    return settings.model_copy(
        update={"watch_settle_seconds": 0.2, "watch_incomplete_seconds": 0.5}
    )


@pytest.fixture
def recorder() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def make_service(watch_settings: Settings) -> Iterator[ServiceFactory]:
    """Build watcher services with fast timings; every one is stopped at teardown."""
    services: list[WatcherService] = []

    def make(
        submitter: Submitter,
        settings: Settings | None = None,
        *,
        backoff: Backoff | None = FAST_BACKOFF,
        poll_runs_every_seconds: float | None = 0.1,
        debounce_seconds: float | None = 0.05,
        polling_interval_seconds: float | None = 0.1,
        claim_lease_seconds: float | None = None,
    ) -> WatcherService:
        service = WatcherService(
            settings or watch_settings,
            submitter,
            backoff=backoff,
            poll_runs_every_seconds=poll_runs_every_seconds,
            debounce_seconds=debounce_seconds,
            polling_interval_seconds=polling_interval_seconds,
            claim_lease_seconds=claim_lease_seconds,
        )
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()
