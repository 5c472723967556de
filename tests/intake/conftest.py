"""Watcher fixtures: fast settings, a recording submitter, services stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taxiops.intake import WatcherService
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
        submitter: object, settings: Settings | None = None, **options: object
    ) -> WatcherService:
        options.setdefault("backoff", FAST_BACKOFF)
        options.setdefault("poll_runs_every_seconds", 0.1)
        options.setdefault("debounce_seconds", 0.05)
        options.setdefault("polling_interval_seconds", 0.1)
        service = WatcherService(settings or watch_settings, submitter, **options)  # type: ignore[arg-type]
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()
