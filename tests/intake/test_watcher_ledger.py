"""The ledger on a real SQLite file, including claims raced by several processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taxiops.intake import FileState, IncomingFile, Ledger, Rejection
from taxiops.tripfile import Month
from tests.intake.watcher_helpers import parquet_bytes, sha256

pytestmark = pytest.mark.timeout(60)


def incoming(seed: int, folder: Path, name: str = "green_tripdata_2023-01.parquet") -> IncomingFile:
    data = parquet_bytes(seed)
    path = folder / name
    path.write_bytes(data)
    return IncomingFile(path, "green", Month(2023, 1), sha256(data), len(data))


def test_a_file_moves_from_seen_to_submitted_to_finished(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    file = incoming(1, tmp_path)

    assert ledger.record_seen(file) is True
    assert ledger.record_seen(file) is False
    assert [e.state for e in ledger.pending()] == [FileState.SEEN]
    assert ledger.mark_finished(file.sha256, FileState.SUCCEEDED) is False  # not submitted yet

    assert ledger.claim(file.sha256, "me", lease_seconds=60) is not None
    assert ledger.mark_submitted(file.sha256, "run-1") is True
    assert ledger.mark_submitted(file.sha256, "run-2") is False
    [entry] = ledger.submitted()
    assert (entry.flow_run_id, entry.claimed_by, entry.submitted_at is not None) == (
        "run-1",
        None,
        True,
    )

    assert ledger.mark_finished(file.sha256, FileState.REJECTED, "no-rows-left") is True
    assert ledger.mark_finished(file.sha256, FileState.SUCCEEDED) is False
    [entry] = ledger.entries()
    assert (entry.state, entry.detail) == (FileState.REJECTED, "no-rows-left")
    assert ledger.pending() == [] and ledger.submitted() == []
    with pytest.raises(ValueError):
        ledger.mark_finished(file.sha256, FileState.SUBMITTED)


def test_the_ledger_is_durable_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    file = incoming(2, tmp_path)
    Ledger(path).record_seen(file)

    reopened = Ledger(path)
    assert reopened.get(file.sha256) is not None
    assert reopened.record_seen(file) is False
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_attempt_waits_for_its_retry_time(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file = incoming(3, tmp_path)
    ledger.record_seen(file)
    assert ledger.claim(file.sha256, "me", lease_seconds=60) is not None
    assert ledger.due() == []  # claimed

    retry_at = time.time() + 3600
    assert ledger.record_failed_attempt(file.sha256, "me", error="refused", retry_at=retry_at) == 1
    assert ledger.due() == []
    assert ledger.claim(file.sha256, "me", lease_seconds=60) is None
    assert ledger.next_attempt_at() == pytest.approx(retry_at)
    [entry] = ledger.pending()
    assert (entry.attempts, entry.detail) == (1, "refused")
    assert [e.sha256 for e in ledger.due(now=retry_at + 1)] == [file.sha256]


def test_a_claim_excludes_others_until_its_lease_expires(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file = incoming(4, tmp_path)
    ledger.record_seen(file)

    assert ledger.claim(file.sha256, "a", lease_seconds=60) is not None
    assert ledger.claim(file.sha256, "b", lease_seconds=60) is None
    ledger.release(file.sha256, "a")
    assert ledger.claim(file.sha256, "b", lease_seconds=-1) is not None  # expired at once
    assert ledger.claim(file.sha256, "a", lease_seconds=60) is not None  # took over


def test_a_renamed_pending_file_takes_its_new_path(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file = incoming(5, tmp_path)
    ledger.record_seen(file)
    moved = file.path.rename(tmp_path / "green_tripdata_2023-02.parquet")
    renamed = IncomingFile(moved, "green", Month(2023, 2), file.sha256, file.size)

    assert ledger.record_seen(renamed) is False
    [entry] = ledger.entries()
    assert (entry.path, entry.month) == (moved, "2023-02")


def test_requeue_and_forget_as_vanished(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file = incoming(6, tmp_path)
    ledger.record_seen(file)
    assert ledger.requeue(file.sha256, "missing") is False  # only submitted files
    ledger.mark_submitted(file.sha256, "run-1")
    assert ledger.requeue(file.sha256, "missing") is True
    [entry] = ledger.pending()
    assert (entry.flow_run_id, entry.detail) == (None, "missing")

    def forget() -> Rejection | None:
        return ledger.forget_vanished(
            file.sha256, path=file.path, rule="file-vanished", detail="gone", message="gone"
        )

    ledger.mark_submitted(file.sha256, "run-2")
    assert forget() is None  # not seen: nothing changes
    assert [e.state for e in ledger.entries()] == [FileState.SUBMITTED]
    assert ledger.outbox.rejections() == []
    assert ledger.requeue(file.sha256, "missing") is True
    vanished = forget()
    assert vanished is not None and vanished.sha256 == file.sha256
    assert ledger.entries() == []
    assert ledger.outbox.rejections() == [vanished]


_CLAIMER = """
import sys
from taxiops.intake import Ledger
ledger, owner, shas = Ledger(sys.argv[1]), sys.argv[2], sys.argv[3:]
print("\\n".join(s for s in shas if ledger.claim(s, owner, lease_seconds=600)), flush=True)
"""


def test_claims_are_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    shas = []
    for seed in range(40):
        file = incoming(100 + seed, tmp_path, name=f"green_tripdata_{2000 + seed}-01.parquet")
        ledger.record_seen(file)
        shas.append(file.sha256)

    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(path), f"owner-{n}", *shas],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    won = [process.communicate(timeout=30)[0].split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    all_wins = [sha for wins in won for sha in wins]
    assert sorted(all_wins) == sorted(shas)  # every file claimed, none twice
    owners = {e.sha256: e.claimed_by for e in ledger.entries()}
    for n, wins in enumerate(won):
        assert all(owners[sha] == f"owner-{n}" for sha in wins)


def test_the_next_due_time_waits_for_another_owners_claim(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.next_attempt_at() is None
    file = incoming(7, tmp_path)
    ledger.record_seen(file)
    assert ledger.next_attempt_at() == 0  # due now
    before = time.time()
    ledger.claim(file.sha256, "other", lease_seconds=600)
    # Not "due now" while someone else holds it: a second watcher must not spin.
    assert (ledger.next_attempt_at() or 0) >= before + 599
    assert ledger.claims() == {file.sha256: "other"}


# The v1 schema as taxiops 0.1 wrote it, to prove an old ledger opens and keeps its rows.
_V1_SCHEMA = """
CREATE TABLE files (
    sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, taxi_type TEXT NOT NULL, month TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('seen', 'submitted', 'succeeded', 'failed', 'rejected')),
    flow_run_id TEXT, detail TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL,
    claimed_by TEXT, claim_expires_at REAL, seen_at REAL NOT NULL, submitted_at REAL,
    finished_at REAL, updated_at REAL NOT NULL
);
CREATE INDEX files_by_state ON files (state);
PRAGMA user_version = 1;
"""


def test_a_v1_ledger_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
        conn.execute(
            "INSERT INTO files (sha256, path, taxi_type, month, size, state, flow_run_id, "
            "seen_at, updated_at) VALUES ('abc', '/in/green_tripdata_2023-01.parquet', "
            "'green', '2023-01', 10, 'failed', 'run-1', 1.0, 2.0)"
        )
    conn.close()

    ledger = Ledger(path)
    (entry,) = ledger.entries()
    assert (entry.state, entry.flow_run_id, entry.runs, entry.run_key) == (
        FileState.FAILED,
        "run-1",
        1,
        "abc",
    )
    retried = ledger.retry("abc")
    assert retried is not None
    assert (retried.state, retried.runs, retried.run_key) == (FileState.SEEN, 2, "abc:run2")
    assert Ledger(path).get("abc") == retried  # opening again migrates nothing twice


def test_crashed_runs_retry_with_a_new_run_key_and_rejections_wait_for_their_alert(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file = incoming(7, tmp_path)
    ledger.record_seen(file)
    ledger.mark_submitted(file.sha256, "run-1")
    assert ledger.finish_and_retry(file.sha256, FileState.CRASHED, "Crashed: killed")
    entry = ledger.get(file.sha256)
    assert entry is not None and (entry.state, entry.runs) == (FileState.SEEN, 2)
    assert ledger.retry(file.sha256) is None  # seen is not retryable: it is on its way

    outbox = ledger.outbox
    assert outbox.next_retry_at() is None
    rejection = outbox.record(
        path=tmp_path / "x.parquet",
        quarantined_path=tmp_path / "q" / "x.parquet",
        rule="file-name",
        detail="bad name",
        message="x.parquet: file-name: bad name",
    )
    assert rejection is not None
    assert [r.id for r in outbox.unsent()] == [rejection.id]
    assert outbox.next_retry_at() == 0  # due now
    retry_at = time.time() + 60
    assert outbox.record_failure(rejection.id, error="refused", retry_at=retry_at) == 1
    assert outbox.unsent() == []
    assert outbox.next_retry_at() == pytest.approx(retry_at)
    again = outbox.record(
        path=tmp_path / "x.parquet",
        quarantined_path=tmp_path / "q" / "x.parquet",
        rule="file-name",
        detail="bad name",
        message="x.parquet: file-name: bad name",
    )
    assert again is None  # one quarantined entry, one rejection
    assert outbox.mark_sent(rejection.id)
    assert not outbox.mark_sent(rejection.id)
    assert outbox.rejections()[0].alert_sent_at is not None
    assert outbox.next_retry_at() is None
    assert Ledger(ledger.path).outbox.rejections() == outbox.rejections()  # same file
