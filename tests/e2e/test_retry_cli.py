"""`taxiops retry FILE`: which files it hands off again, and the one clear line when it won't."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxiops.errors import RetryRefusedError
from taxiops.intake import FileState, Ledger, describe_incoming, retry_file
from taxiops.ml import write_synth_month
from taxiops.tripfile import Month
from tests.e2e.harness import Site


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "home" / "ledger.sqlite3")


def entry_in(ledger: Ledger, folder: Path, month: str, state: FileState) -> Path:
    """A month file in the ledger in `state`, as the watcher would have left it."""
    path = write_synth_month(folder, "green", Month.parse(month), rows=200, seed=int(month[-2:]))
    incoming = describe_incoming(path)
    ledger.record_seen(incoming)
    if state is not FileState.SEEN:
        assert ledger.claim(incoming.sha256, "test", lease_seconds=60)
        ledger.mark_submitted(incoming.sha256, f"run-of-{month}")
    if state.is_finished:
        ledger.mark_finished(incoming.sha256, state, "how it ended")
    return path


@pytest.mark.parametrize("state", [FileState.FAILED, FileState.CRASHED])
def test_a_failed_or_crashed_file_is_queued_as_its_next_run(
    ledger: Ledger, tmp_path: Path, state: FileState
) -> None:
    path = entry_in(ledger, tmp_path / "incoming", "2023-01", state)

    by_path = retry_file(ledger, path)

    assert (by_path.state, by_path.runs, by_path.flow_run_id) == (FileState.SEEN, 2, None)
    assert by_path.run_key.endswith(":run2")
    assert [e.sha256 for e in ledger.due()] == [by_path.sha256]


def test_a_file_name_finds_the_newest_entry_of_that_name(ledger: Ledger, tmp_path: Path) -> None:
    old = entry_in(ledger, tmp_path / "a", "2023-01", FileState.SUCCEEDED)
    entry_in(ledger, tmp_path / "b", "2023-02", FileState.CRASHED)
    newer = write_synth_month(tmp_path / "c", "green", Month(2023, 1), rows=200, seed=7)
    ledger.record_seen(describe_incoming(newer))
    ledger.claim(describe_incoming(newer).sha256, "test", lease_seconds=60)
    ledger.mark_submitted(describe_incoming(newer).sha256, "run")
    ledger.mark_finished(describe_incoming(newer).sha256, FileState.FAILED)

    retried = retry_file(ledger, old.name)  # the name only: the newest entry, not `old`

    assert retried.path == newer and retried.runs == 2


def test_a_path_whose_bytes_changed_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    path = entry_in(ledger, tmp_path / "incoming", "2023-01", FileState.CRASHED)
    write_synth_month(path.parent, "green", Month(2023, 1), rows=200, seed=99)

    with pytest.raises(RetryRefusedError, match="its bytes are not in the ledger"):
        retry_file(ledger, path)


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (FileState.REJECTED, "fix the file and drop the fixed bytes"),
        (FileState.SUBMITTED, "already on its way"),
        (FileState.SEEN, "already on its way"),
        (FileState.SUCCEEDED, "succeeded"),
    ],
)
def test_other_states_are_refused_with_what_to_do(
    ledger: Ledger, tmp_path: Path, state: FileState, says: str
) -> None:
    path = entry_in(ledger, tmp_path / "incoming", "2023-01", state)

    with pytest.raises(RetryRefusedError, match=says):
        retry_file(ledger, path)

    assert ledger.entries()[0].runs == 1


def test_the_command_exits_2_with_one_line_when_it_refuses(tmp_path: Path) -> None:
    site = Site(tmp_path, api_url="http://127.0.0.1:9/api")
    entry_in(site.ledger(), site.incoming, "2023-01", FileState.REJECTED)

    refused = site.run("retry", "green_tripdata_2023-01.parquet")
    unknown = site.run("retry", "yellow_tripdata_2023-01.parquet")
    retried_path = entry_in(site.ledger(), site.incoming, "2023-02", FileState.CRASHED)
    retried = site.run("retry", str(retried_path))

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().count("\n") == 0
    assert "cannot retry green_tripdata_2023-01.parquet" in refused.stderr
    assert unknown.returncode == 2 and "not in the ledger" in unknown.stderr
    assert retried.returncode == 0, retried.stderr
    assert "queued as run 2" in retried.stdout
