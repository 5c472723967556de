"""The watcher on a real folder with real watchdog observers and a recording submitter."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from taxiops.intake import (
    FileState,
    Ledger,
    RunOutcome,
    RunStatus,
    describe_incoming,
    outcome_from_state,
    status_rows,
)
from taxiops.intake.quarantine import read_reason
from taxiops.settings import Settings
from tests.intake.watcher_helpers import (
    RecordingSubmitter,
    ServiceFactory,
    parquet_bytes,
    sha256,
    wait_for,
    write_file,
)

pytestmark = pytest.mark.timeout(60)


def test_slowly_written_file_is_handed_off_once_and_only_when_complete(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    data = parquet_bytes(1, rows=20_000)
    target = watch_settings.incoming_dir / "green_tripdata_2023-01.parquet"
    # Long enough that the stalled writer below is never taken for a torn file.
    patient = watch_settings.model_copy(update={"watch_incomplete_seconds": 10.0})
    service = make_service(recorder, patient)
    service.start()

    half = len(data) // 2
    with target.open("wb") as handle:
        for start in range(0, half, half // 4):  # a slow writer: chunks with pauses
            handle.write(data[start : min(start + half // 4, half)])
            handle.flush()
            time.sleep(0.02)
        # The writer stalls longer than the settle time: the watcher must see a torn file.
        wait_for(lambda: service.stats().incomplete >= 1, what="a check of the half-written file")
        assert recorder.calls == []
        handle.write(data[half:])
    completed_at = time.monotonic()

    wait_for(lambda: recorder.calls, what="the hand-off")
    service.stop()
    assert len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call.at > completed_at
    assert call.incoming.sha256 == sha256(data)
    assert (call.incoming.taxi_type, str(call.incoming.month)) == ("green", "2023-01")
    assert call.incoming.path == target.resolve()
    assert call.incoming.size == len(data)


def test_files_moved_into_the_folder_are_handed_off(
    make_service: ServiceFactory,
    recorder: RecordingSubmitter,
    watch_settings: Settings,
    tmp_path: Path,
) -> None:
    folder = watch_settings.incoming_dir.resolve()
    staging = tmp_path / "staging"
    staging.mkdir()
    make_service(recorder).start()

    # From outside the folder (inotify reports a create) ...
    outside = write_file(staging / "yellow_tripdata_2023-01.parquet", parquet_bytes(2))
    os.replace(outside, folder / outside.name)
    # ... and a rename inside it, from a temporary name the handler skips.
    partial = write_file(folder / "green_tripdata_2023-02.parquet.part", parquet_bytes(3))
    os.replace(partial, folder / "green_tripdata_2023-02.parquet")

    wait_for(lambda: len(recorder.calls) == 2, what="two hand-offs")
    assert {c.incoming.path.name for c in recorder.calls} == {
        "yellow_tripdata_2023-01.parquet",
        "green_tripdata_2023-02.parquet",
    }


def test_files_that_are_not_month_files_are_quarantined_with_their_reason(
    make_service: ServiceFactory,
    recorder: RecordingSubmitter,
    watch_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="taxiops.intake")
    folder, quarantine_dir = watch_settings.incoming_dir, watch_settings.quarantine_dir
    service = make_service(recorder)
    service.start()
    strangers = [
        write_file(folder / "notes.csv", b"not a month"),
        write_file(folder / "green_tripdata_2023-13.parquet", parquet_bytes(4)),
        write_file(folder / "blue_tripdata_2023-01.parquet", parquet_bytes(5)),
        write_file(folder / "green_tripdata_2023-01.csv", parquet_bytes(6)),
    ]
    wait_for(lambda: len(recorder.rejected()) == 4, what="four rejection alerts")
    write_file(folder / "green_tripdata_2023-03.parquet", parquet_bytes(7))
    wait_for(lambda: recorder.calls, what="the month file's hand-off")

    service.stop()
    assert [c.incoming.path.name for c in recorder.calls] == ["green_tripdata_2023-03.parquet"]
    for path in strangers:
        assert not path.exists()
        assert read_reason(quarantine_dir / path.name)["rule"] == "file-name"
    assert sorted(r.path.name for r in recorder.rejections) == sorted(p.name for p in strangers)
    assert service.stats().rejected == 4
    assert "file-name" in caplog.text and "green_tripdata_2023-13.parquet" in caplog.text
    assert [e.path.name for e in status_rows(watch_settings)] == ["green_tripdata_2023-03.parquet"]


def test_same_bytes_under_two_names_are_handed_off_once(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    folder = watch_settings.incoming_dir
    data = parquet_bytes(8)
    service = make_service(recorder)
    service.start()
    write_file(folder / "green_tripdata_2023-01.parquet", data)
    wait_for(lambda: recorder.calls, what="the first hand-off")
    write_file(folder / "green_tripdata_2023-02.parquet", data)
    wait_for(lambda: service.stats().duplicates == 1, what="the copy to be recognised")

    service.stop()
    assert recorder.shas() == [sha256(data)]
    assert len(service.ledger.entries()) == 1


def test_changed_bytes_under_the_same_name_are_handed_off_again(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    target = watch_settings.incoming_dir / "yellow_tripdata_2023-04.parquet"
    first, second = parquet_bytes(9), parquet_bytes(10)
    service = make_service(recorder)
    service.start()
    write_file(target, first)
    wait_for(lambda: recorder.calls, what="the first hand-off")
    write_file(target, second)
    wait_for(lambda: len(recorder.calls) == 2, what="the second hand-off")

    service.stop()
    assert recorder.shas() == [sha256(first), sha256(second)]
    assert {e.state for e in service.ledger.entries()} == {FileState.SUBMITTED}


def test_files_dropped_while_stopped_are_handed_off_at_the_next_start(
    make_service: ServiceFactory, watch_settings: Settings
) -> None:
    folder = watch_settings.incoming_dir
    # While the API is down: the file is recorded but stays pending.
    down = RecordingSubmitter(fail_first=10**6)
    first = make_service(down)
    first.start()
    write_file(folder / "green_tripdata_2023-05.parquet", parquet_bytes(11))
    wait_for(lambda: down.attempts, what="a failed hand-off")
    first.stop()
    assert [e.state for e in first.ledger.pending()] == [FileState.SEEN]

    # While no watcher runs at all.
    write_file(folder / "green_tripdata_2023-06.parquet", parquet_bytes(12))
    write_file(folder / "yellow_tripdata_2023-06.parquet", parquet_bytes(13))

    up = RecordingSubmitter()
    make_service(up).start()
    wait_for(lambda: len(up.calls) == 3, what="three hand-offs after restart")
    assert sorted(c.incoming.path.name for c in up.calls) == [
        "green_tripdata_2023-05.parquet",
        "green_tripdata_2023-06.parquet",
        "yellow_tripdata_2023-06.parquet",
    ]


def test_connection_errors_are_retried_with_backoff_until_the_hand_off_works(
    make_service: ServiceFactory, watch_settings: Settings
) -> None:
    flaky = RecordingSubmitter(fail_first=3)
    service = make_service(flaky)
    service.start()
    data = parquet_bytes(14)
    write_file(watch_settings.incoming_dir / "green_tripdata_2023-07.parquet", data)
    entry = wait_for(
        lambda: next(iter(service.ledger.submitted()), None), what="the eventual hand-off"
    )

    assert len(flaky.attempts) == 4 and flaky.shas() == [sha256(data)]
    gaps = [
        later - earlier for earlier, later in zip(flaky.attempts, flaky.attempts[1:], strict=False)
    ]
    assert all(gap >= expected * 0.9 for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True))
    assert service.stats().failed_attempts == 3
    assert entry.attempts == 3 and entry.flow_run_id == "run-1"


def test_the_polling_observer_works_too(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    polling = watch_settings.model_copy(update={"watch_polling": True})
    service = make_service(recorder, polling)
    service.start()
    assert service.uses_polling
    data = parquet_bytes(15)
    write_file(polling.incoming_dir / "yellow_tripdata_2023-08.parquet", data)
    wait_for(lambda: recorder.calls, what="the hand-off")
    assert recorder.shas() == [sha256(data)]


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_stop_joins_every_thread_it_started(
    make_service: ServiceFactory,
    recorder: RecordingSubmitter,
    watch_settings: Settings,
    polling: bool,
) -> None:
    before = set(threading.enumerate())
    service = make_service(recorder, watch_settings.model_copy(update={"watch_polling": polling}))
    with service:
        write_file(
            watch_settings.incoming_dir / "green_tripdata_2023-09.parquet", parquet_bytes(16)
        )
        wait_for(lambda: recorder.calls, what="the hand-off")
        ours = [t for t in set(threading.enumerate()) - before if _is_watcher_thread(t)]
        assert len(ours) >= 3  # observer, emitter, worker
    assert not service.is_running
    assert not any(thread.is_alive() for thread in ours)
    assert [t for t in threading.enumerate() if _is_watcher_thread(t)] == []


@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_a_removed_folder_is_told_as_a_failure(
    make_service: ServiceFactory,
    recorder: RecordingSubmitter,
    watch_settings: Settings,
    polling: bool,
) -> None:
    """watchdog stops watching a folder that is removed; `failure()` says so (and
    `taxiops up` restarts the watcher on it: tests/e2e/test_bad_input_e2e.py)."""
    service = make_service(recorder, watch_settings.model_copy(update={"watch_polling": polling}))
    assert service.failure() is None  # not started
    with service:
        assert service.failure() is None
        shutil.rmtree(watch_settings.incoming_dir)
        reason = wait_for(service.failure, what="the failure told")
        assert str(service.folder) in reason
    assert service.failure() is None  # stopped on purpose


def test_taxiops_watch_watches_a_removed_folder_again(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    """`run_forever()` (`taxiops watch`) restarts a service that stopped working: the new
    one makes the folder again, and a file dropped into it is handed off."""
    service = make_service(recorder)
    runner = threading.Thread(target=service.run_forever, daemon=True)
    runner.start()
    wait_for(lambda: service.is_running, what="the service running")
    shutil.rmtree(watch_settings.incoming_dir)
    wait_for(
        lambda: watch_settings.incoming_dir.is_dir() and service.failure() is None,
        what="the folder made again by a new start",
    )
    data = parquet_bytes(17)
    write_file(watch_settings.incoming_dir / "green_tripdata_2023-10.parquet", data)
    wait_for(lambda: recorder.calls, what="the hand-off from the new folder")
    assert recorder.shas() == [sha256(data)]
    service.request_stop()
    runner.join(10)
    assert not runner.is_alive() and not service.is_running


def _is_watcher_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith("taxiops-watcher") or type(thread).__module__.startswith(
        "watchdog."
    )


def test_two_watchers_on_one_folder_and_ledger_hand_each_file_off_once(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    first, second = make_service(recorder), make_service(recorder)
    first.start()
    second.start()
    datas = [parquet_bytes(seed) for seed in (17, 18, 19, 20)]
    names = [f"green_tripdata_2022-{month:02d}.parquet" for month in (1, 2, 3, 4)]
    for name, data in zip(names, datas, strict=True):
        write_file(watch_settings.incoming_dir / name, data)
    wait_for(lambda: len(first.ledger.submitted()) == 4, what="four submitted files")

    first.stop()
    second.stop()
    assert sorted(recorder.shas()) == sorted(sha256(data) for data in datas)
    both = first.stats(), second.stats()
    assert sum(s.submitted for s in both) == 4
    assert sum(s.accepted for s in both) == 4


def test_finished_runs_are_recorded_and_missing_runs_handed_off_again(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    folder = watch_settings.incoming_dir
    for month, seed in ((1, 21), (2, 22), (3, 23)):
        write_file(folder / f"yellow_tripdata_2022-{month:02d}.parquet", parquet_bytes(seed))
    service = make_service(recorder)
    service.start()
    wait_for(lambda: len(service.ledger.submitted()) == 3, what="three submitted files")
    service.stop()
    by_name = {c.incoming.path.name: c for c in recorder.calls}
    run_of = {name: f"run-{recorder.calls.index(call) + 1}" for name, call in by_name.items()}

    # While the watcher was down: one run succeeded, one was rejected, one vanished.
    recorder.outcomes[run_of["yellow_tripdata_2022-01.parquet"]] = RunOutcome(
        RunStatus.SUCCEEDED, "Completed"
    )
    recorder.outcomes[run_of["yellow_tripdata_2022-02.parquet"]] = RunOutcome(
        RunStatus.REJECTED, "Failed: DataValidationError: ...: no-rows-left: ..."
    )
    recorder.outcomes[run_of["yellow_tripdata_2022-03.parquet"]] = RunOutcome(
        RunStatus.MISSING, "flow run not found"
    )
    restarted = make_service(recorder)
    restarted.start()
    wait_for(
        lambda: restarted.stats().submitted == 1, what="the missing run's file handed off again"
    )
    wait_for(lambda: restarted.stats().finished == 2, what="two finished runs recorded")

    states = {e.path.name: e for e in restarted.ledger.entries()}
    assert states["yellow_tripdata_2022-01.parquet"].state is FileState.SUCCEEDED
    assert states["yellow_tripdata_2022-02.parquet"].state is FileState.REJECTED
    assert "no-rows-left" in (states["yellow_tripdata_2022-02.parquet"].detail or "")
    resubmitted = states["yellow_tripdata_2022-03.parquet"]
    assert resubmitted.state is FileState.SUBMITTED and resubmitted.flow_run_id == "run-4"
    assert recorder.calls[3].incoming.path.name == "yellow_tripdata_2022-03.parquet"
    assert restarted.stats().requeued == 1


def test_a_file_renamed_while_pending_is_handed_off_under_its_new_name(
    make_service: ServiceFactory, watch_settings: Settings
) -> None:
    folder = watch_settings.incoming_dir
    down = RecordingSubmitter(fail_first=10**6)
    first = make_service(down)
    first.start()
    data = parquet_bytes(24)
    write_file(folder / "green_tripdata_2021-01.parquet", data)
    wait_for(lambda: down.attempts, what="a failed hand-off")
    first.stop()
    shutil.move(
        folder / "green_tripdata_2021-01.parquet", folder / "green_tripdata_2021-02.parquet"
    )

    up = RecordingSubmitter()
    make_service(up).start()
    wait_for(lambda: up.calls, what="the hand-off")
    assert [c.incoming.path.name for c in up.calls] == ["green_tripdata_2021-02.parquet"]
    assert Ledger(watch_settings.ledger_path).get(sha256(data)) is not None
    assert up.rejections == []  # followed the rename: not reported as vanished


def test_a_claim_left_by_a_crashed_watcher_is_released_at_start(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    data = parquet_bytes(25)
    path = write_file(watch_settings.incoming_dir / "green_tripdata_2021-03.parquet", data)
    ledger = Ledger(watch_settings.ledger_path)
    ledger.record_seen(describe_incoming(path.resolve()))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert ledger.claim(sha256(data), f"{socket.gethostname()}:{gone.pid}:dead", lease_seconds=600)

    make_service(recorder).start()
    wait_for(lambda: recorder.calls, what="the hand-off of the orphaned claim")
    assert recorder.shas() == [sha256(data)]


def test_a_run_cancelled_by_our_shutdown_is_discarded_and_handed_off_again(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    write_file(watch_settings.incoming_dir / "green_tripdata_2022-05.parquet", parquet_bytes(31))
    service = make_service(recorder)
    service.start()
    wait_for(lambda: len(service.ledger.submitted()) == 1, what="one submitted file")
    service.stop()
    recorder.outcomes["run-1"] = outcome_from_state(
        "CANCELLED", "Cancelled", "Runner is shutting down."
    )

    restarted = make_service(recorder)
    restarted.start()
    wait_for(lambda: restarted.stats().submitted == 1, what="the interrupted file handed off again")

    assert recorder.discarded == ["run-1"]
    (entry,) = restarted.ledger.entries()
    assert entry.state is FileState.SUBMITTED and entry.flow_run_id == "run-2"


def test_a_run_cancelled_by_a_person_stays_failed(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    write_file(watch_settings.incoming_dir / "green_tripdata_2022-06.parquet", parquet_bytes(32))
    service = make_service(recorder)
    service.start()
    wait_for(lambda: len(service.ledger.submitted()) == 1, what="one submitted file")
    recorder.outcomes["run-1"] = outcome_from_state("CANCELLED", "Cancelled", "Cancelled in the UI")
    wait_for(lambda: service.stats().finished == 1, what="the cancelled run recorded")
    service.stop()

    (entry,) = service.ledger.entries()
    assert entry.state is FileState.FAILED and recorder.discarded == []
