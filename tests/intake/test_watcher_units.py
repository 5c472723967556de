"""Small pieces: the completeness check, admission, backoff, outcome mapping, the handler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taxiops import names
from taxiops.errors import DataValidationError
from taxiops.intake import (
    Admitted,
    Backoff,
    FileSignature,
    FileTouched,
    Gone,
    IncomingFileHandler,
    Refused,
    RunStatus,
    StillArriving,
    Verdict,
    describe_incoming,
    entry_signature,
    has_parquet_footer,
    inspect_entry,
    outcome_from_state,
)
from taxiops.intake._debounce import Debouncer
from tests.intake.watcher_helpers import parquet_bytes, sha256


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
            names.REJECTED_STATE,
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


def test_the_handler_passes_every_name_but_files_in_flight(tmp_path: Path) -> None:
    touched: list[FileTouched] = []
    handler = IncomingFileHandler(touched.append)
    for name in (
        "green_tripdata_2023-01.parquet",
        "notes.txt",  # quarantined by the worker, so it must reach it
        "green_tripdata_2023-00.parquet",
        ".green_tripdata_2023-02.parquet",  # hidden: an upload in flight, skipped silently
        "green_tripdata_2023-03.parquet.part",
        "green_tripdata_2023-03.parquet.crdownload",
    ):
        handler.touch(tmp_path / name)
    assert [t.path.name for t in touched] == [
        "green_tripdata_2023-01.parquet",
        "notes.txt",
        "green_tripdata_2023-00.parquet",
    ]


def _rule(verdict: Verdict) -> str:
    assert isinstance(verdict, Refused | StillArriving), verdict
    return verdict.error.rule.value


def test_admission_decides_every_kind_of_entry(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = parquet_bytes(3)
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(good)

    def inspect(name: str, max_file_bytes: int = 10**9) -> Verdict:
        return inspect_entry(folder / name, folder, max_file_bytes=max_file_bytes)

    (folder / "green_tripdata_2023-01.parquet").write_bytes(good)
    assert inspect("green_tripdata_2023-01.parquet") == Admitted(
        folder / "green_tripdata_2023-01.parquet", len(good)
    )
    assert _rule(inspect("green_tripdata_2023-01.parquet", len(good) - 1)) == "too-large"
    (folder / "green_tripdata_2023-02.parquet").write_bytes(b"")
    assert isinstance(inspect("green_tripdata_2023-02.parquet"), StillArriving)
    (folder / "green_tripdata_2023-03.parquet").write_bytes(good[: len(good) // 2])
    assert isinstance(inspect("green_tripdata_2023-03.parquet"), StillArriving)
    (folder / "green_tripdata_2023-04.parquet").write_bytes(b"PA")  # the magic, half written
    assert isinstance(inspect("green_tripdata_2023-04.parquet"), StillArriving)
    (folder / "green_tripdata_2023-05.parquet").write_bytes(b"VendorID,fare\n1,2.5\n")
    assert _rule(inspect("green_tripdata_2023-05.parquet")) == "unreadable-parquet"
    (folder / "green_tripdata_2023-13.parquet").write_bytes(good)
    assert _rule(inspect("green_tripdata_2023-13.parquet")) == "file-name"
    (folder / "green_tripdata_2023-06 (1).parquet").write_bytes(good)
    assert _rule(inspect("green_tripdata_2023-06 (1).parquet")) == "file-name"
    (folder / "green_tripdata_2023-07.parquet").mkdir()
    assert _rule(inspect("green_tripdata_2023-07.parquet")) == "not-a-file"
    os.mkfifo(folder / "green_tripdata_2023-08.parquet")  # must not block on open
    assert _rule(inspect("green_tripdata_2023-08.parquet")) == "not-a-file"
    (folder / "green_tripdata_2023-09.parquet").symlink_to(outside)
    assert _rule(inspect("green_tripdata_2023-09.parquet")) == "symlink-outside"
    (folder / "green_tripdata_2023-10.parquet").symlink_to(tmp_path / "nowhere.parquet")
    assert _rule(inspect("green_tripdata_2023-10.parquet")) == "symlink-outside"
    (folder / "green_tripdata_2023-11.parquet").symlink_to(
        folder / "green_tripdata_2023-01.parquet"
    )
    assert isinstance(inspect("green_tripdata_2023-11.parquet"), Admitted)
    assert inspect("green_tripdata_2023-12.parquet") == Gone(
        folder / "green_tripdata_2023-12.parquet"
    )


def test_the_signature_of_a_link_out_of_the_folder_is_the_link_s_own(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"x" * 1000)
    link = folder / "green_tripdata_2023-01.parquet"
    link.symlink_to(outside)
    signature = entry_signature(link, folder)
    assert signature is not None and signature.size == link.lstat().st_size != 1000
    inside = folder / "green_tripdata_2023-02.parquet"
    inside.symlink_to(folder / "target.bin")
    (folder / "target.bin").write_bytes(b"y" * 77)
    target = (folder / "target.bin").stat()
    assert entry_signature(inside, folder) == FileSignature(target.st_size, target.st_mtime_ns)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert entry_signature(tmp_path / "dangling", tmp_path) is not None
    assert entry_signature(folder / "absent", folder) is None


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
