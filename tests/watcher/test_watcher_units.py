"""Small pieces: the completeness check, backoff, outcome mapping, the handler's name rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxiops import events
from taxiops.errors import DataValidationError
from taxiops.watcher import (
    Backoff,
    FileTouched,
    IncomingFileHandler,
    RunStatus,
    describe_incoming,
    has_parquet_footer,
    outcome_from_state,
)
from taxiops.watcher._debounce import Debouncer
from tests.watcher.watcher_helpers import parquet_bytes, sha256


def test_a_torn_parquet_file_has_no_footer(tmp_path: Path) -> None:
    data = parquet_bytes(1)
    whole = tmp_path / "whole.parquet"
    whole.write_bytes(data)
    assert has_parquet_footer(whole)

    for cut in (0, 3, len(data) // 2, len(data) - 1):
        torn = tmp_path / f"torn-{cut}.parquet"
        torn.write_bytes(data[:cut])
        assert not has_parquet_footer(torn), cut
    # The magic alone is not enough: the footer must parse.
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"PAR1" + b"\0" * 64 + b"\xff\xff\x00\x00PAR1")
    assert not has_parquet_footer(fake)
    assert not has_parquet_footer(tmp_path / "absent.parquet")


def test_describe_incoming_names_and_hashes_a_month_file(tmp_path: Path) -> None:
    data = parquet_bytes(2)
    path = tmp_path / "yellow_tripdata_2024-11.parquet"
    path.write_bytes(data)
    incoming = describe_incoming(path)
    assert (incoming.taxi_type, str(incoming.month), incoming.sha256, incoming.size) == (
        "yellow",
        "2024-11",
        sha256(data),
        len(data),
    )
    assert incoming.event_payload()["month"] == "2024-11"
    with pytest.raises(DataValidationError, match="file-name"):
        describe_incoming(tmp_path / "yellow_tripdata_2024-13.parquet")


def test_backoff_doubles_up_to_its_ceiling() -> None:
    policy = Backoff(first_delay_seconds=1, factor=2, max_delay_seconds=10)
    assert [policy.delay(n) for n in range(7)] == [0, 1, 2, 4, 8, 10, 10]
    assert policy.delay(10_000) == 10
    with pytest.raises(ValueError):
        Backoff(first_delay_seconds=5, max_delay_seconds=1)


@pytest.mark.parametrize(
    ("state_type", "state_name", "message", "status"),
    [
        ("COMPLETED", "Completed", None, RunStatus.SUCCEEDED),
        (
            "FAILED",
            events.REJECTED_STATE,
            "x.parquet: missing-column: missing column(s) ...",
            RunStatus.REJECTED,
        ),
        (
            "FAILED",
            "Failed",
            "Flow run encountered an exception: DataValidationError: x.parquet: "
            "unreadable-parquet: ...",
            RunStatus.REJECTED,
        ),
        ("FAILED", "Failed", "Flow run encountered an exception: OSError: boom", RunStatus.FAILED),
        ("CRASHED", "Crashed", "Execution was interrupted", RunStatus.CRASHED),
        ("CANCELLED", "Cancelled", None, RunStatus.FAILED),
        ("SCHEDULED", "Scheduled", None, RunStatus.ACTIVE),
        ("RUNNING", "Running", None, RunStatus.ACTIVE),
    ],
)
def test_prefect_states_map_to_outcomes(
    state_type: str, state_name: str, message: str | None, status: RunStatus
) -> None:
    outcome = outcome_from_state(state_type, state_name, message)
    assert outcome.status is status
    assert outcome.detail is not None and outcome.detail.startswith(state_name)


def test_the_handler_passes_month_files_and_skips_the_rest(tmp_path: Path) -> None:
    touched: list[FileTouched] = []
    handler = IncomingFileHandler(touched.append)
    for name in (
        "green_tripdata_2023-01.parquet",
        "notes.txt",
        "green_tripdata_2023-00.parquet",
        ".green_tripdata_2023-02.parquet",  # hidden: an upload in flight, skipped silently
        "green_tripdata_2023-03.parquet.part",
    ):
        handler.touch(tmp_path / name)
    handler.touch(tmp_path / "notes.txt")  # logged once only
    assert [t.path.name for t in touched] == ["green_tripdata_2023-01.parquet"]
    assert handler.ignored_count == 2


def test_a_burst_of_touches_is_one_check_after_the_quiet_spell() -> None:
    now = [0.0]
    debouncer = Debouncer(0.5, clock=lambda: now[0])
    path, other = Path("/in/green_tripdata_2023-01.parquet"), Path("/in/other")
    for t in (0.0, 0.1, 0.2, 0.3):  # created, modified, modified, closed
        now[0] = t
        debouncer.touch(path)
    now[0] = 0.4
    debouncer.touch(other)
    assert debouncer.pop_due(0.79) == []
    assert debouncer.next_due() == pytest.approx(0.8)
    [check] = debouncer.pop_due(0.8)
    assert (check.path, check.signature) == (path, None)
    assert [c.path for c in debouncer.pop_due(10)] == [other]
    assert len(debouncer) == 0 and debouncer.next_due() is None
