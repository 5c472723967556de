"""The supervisor's restart rules and the outage log summary, on real loggers and a real
logging config read by Prefect's own loader."""

from __future__ import annotations

import asyncio
import logging
import logging.config
from pathlib import Path

import pytest
from prefect.logging.configuration import load_logging_config

from taxiops.app.outage_logs import OutageLogSummary, write_logging_config
from taxiops.app.supervisor import RestartPolicy, supervise
from taxiops.errors import ChildFailedError
from taxiops.intake import Backoff


class FailingChild:
    """Starts, then ends at once, `failures` times; then runs until stopped."""

    name = "the test child"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0

    async def start(self, stop: asyncio.Event) -> bool:
        self.starts += 1
        return True

    async def wait(self, stop: asyncio.Event) -> str:
        if self.starts <= self.failures:
            raise OSError(f"boom {self.starts}\nsecond line")
        await stop.wait()
        return "stopped"


POLICY = RestartPolicy(Backoff(0.01, 2.0, 0.05), quick_failure_seconds=5.0, max_quick_failures=3)


def test_a_child_that_keeps_failing_gives_up_naming_the_child_and_its_last_error() -> None:
    child = FailingChild(failures=10)
    with pytest.raises(ChildFailedError) as caught:
        asyncio.run(supervise(child, asyncio.Event(), POLICY))
    assert child.starts == 3
    assert str(caught.value) == (
        "the test child failed 3 times in a row, last: OSError: boom 3; taxiops up stopped"
    )


def test_a_child_that_recovers_is_restarted_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    child = FailingChild(failures=2)

    async def run() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(supervise(child, stop, POLICY))
        while child.starts < 3:
            await asyncio.sleep(0.01)
        stop.set()
        return (await task).restarts

    with caplog.at_level(logging.WARNING, "taxiops.app.supervisor"):
        assert asyncio.run(run()) == 2
    restarts = [r.getMessage() for r in caplog.records]
    assert len(restarts) == 2 and all("\n" not in line for line in restarts)
    assert restarts[0].startswith("the test child stopped after 0.0s (OSError: boom 1); restart 1")


def test_outage_summary_holds_back_repeats_and_passes_other_loggers() -> None:
    now = [0.0]
    summary = OutageLogSummary(window_seconds=60, clock=lambda: now[0])

    def record(name: str, msg: str) -> logging.LogRecord:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError:
            import sys

            return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), sys.exc_info())

    first = record("EventsWorker", "Service %r failed")
    assert summary.filter(first) and first.exc_info is not None
    assert not any(summary.filter(record("EventsWorker", "Service %r failed")) for _ in range(5))
    assert all(summary.filter(record("taxiops.intake", "Service %r failed")) for _ in range(3))
    now[0] = 61.0
    later = record("EventsWorker", "Service %r failed")
    assert summary.filter(later) and later.exc_info is None
    assert "5 more like it" in later.getMessage()


def test_logging_config_is_prefects_own_with_the_filter_on_every_handler(tmp_path: Path) -> None:
    config = load_logging_config(write_logging_config(tmp_path / "logging.yml"))
    assert config["filters"]["taxiops_outage_summary"]["()"].endswith("OutageLogSummary")
    assert all("taxiops_outage_summary" in h["filters"] for h in config["handlers"].values())
    assert "$" not in str(config["loggers"]["prefect"]["level"])
    logging.config.dictConfig({**config, "incremental": False, "disable_existing_loggers": False})
