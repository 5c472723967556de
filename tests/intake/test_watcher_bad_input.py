"""Bad input at the watcher: refused with a clear message, kept in quarantine, alerted on once,
and the service goes on to the next file. Real folders, real observers, a recording submitter."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from taxiops.app.cli import app
from taxiops.intake import Ledger, Rejection, WatcherService
from taxiops.intake.quarantine import quarantined_entries, read_reason
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

MONTH = "green_tripdata_2023-03.parquet"


@dataclass
class Watch:
    """A running watcher on the test's folder, and what to expect of a rejection."""

    service: WatcherService
    recorder: RecordingSubmitter
    settings: Settings
    caplog: pytest.LogCaptureFixture

    @property
    def folder(self) -> Path:
        return self.settings.incoming_dir

    @property
    def quarantine_dir(self) -> Path:
        return self.settings.quarantine_dir.resolve()

    def expect_rejected(self, name: str, rule: str) -> Rejection:
        """`name` went to quarantine with its reason, was announced once and logged clearly."""

        def announced() -> list[Rejection]:
            return [r for r in self.recorder.rejected() if r.path.name == name]

        [rejection] = wait_for(announced, what=f"the rejection alert of {name!r}")
        kept = self.quarantine_dir / name
        assert (rejection.path.name, rejection.rule) == (name, rule)
        assert rejection.quarantined_path == kept
        assert not os.path.lexists(self.folder / name), "still in the incoming folder"
        assert os.path.lexists(kept), "not in quarantine"
        reason = read_reason(kept)
        assert (reason["file"], reason["rule"]) == (name, rule)
        assert reason["hint"] and name in str(reason["message"])
        self.expect_warning(name, rule)
        return rejection

    def expect_warning(self, name: str, rule: str) -> None:
        warnings = [
            r.getMessage()
            for r in self.caplog.records
            if r.name == "taxiops.intake" and r.levelno == logging.WARNING
        ]
        assert any(name in line and rule in line for line in warnings), warnings

    def expect_service_goes_on(self, seed: int = 99, *, rejections: int = 1) -> None:
        """A good month dropped now is handed off; no second alert was sent meanwhile."""
        data = parquet_bytes(seed)
        write_file(self.folder / "yellow_tripdata_2022-07.parquet", data)
        wait_for(lambda: sha256(data) in self.recorder.shas(), what="the good month's hand-off")
        assert len(self.recorder.rejected()) == rejections
        assert self.service.stats().rejected == rejections


StartWatch = Callable[..., Watch]


@pytest.fixture
def watch_with(
    make_service: ServiceFactory,
    recorder: RecordingSubmitter,
    watch_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> StartWatch:
    """Start a watcher (other settings, service options) and return its `Watch`."""
    caplog.set_level(logging.INFO, logger="taxiops.intake")

    def start(settings: Settings | None = None, **options: Any) -> Watch:
        settings = settings or watch_settings
        service = make_service(recorder, settings, **options)
        service.start()
        return Watch(service, recorder, settings, caplog)

    return start


@pytest.fixture
def watch(watch_with: StartWatch) -> Watch:
    return watch_with()


# --- one test per kind ---------------------------------------------------------------------
def test_a_zero_byte_file_is_quarantined_once_it_stayed_empty(
    watch: Watch, watch_settings: Settings
) -> None:
    dropped = time.monotonic()
    write_file(watch.folder / MONTH, b"")
    rejection = watch.expect_rejected(MONTH, "unreadable-parquet")
    assert time.monotonic() - dropped >= watch_settings.watch_incomplete_seconds
    assert "empty" in rejection.detail
    watch.expect_service_goes_on()


def test_a_truncated_parquet_file_is_quarantined_once_it_stayed_torn(watch: Watch) -> None:
    data = parquet_bytes(1)
    write_file(watch.folder / MONTH, data[: len(data) // 2])
    rejection = watch.expect_rejected(MONTH, "unreadable-parquet")
    assert "footer" in rejection.detail
    assert watch.service.stats().incomplete >= 1
    watch.expect_service_goes_on()


def test_a_csv_renamed_to_parquet_is_quarantined_without_waiting(
    watch_with: StartWatch, watch_settings: Settings
) -> None:
    # A long incomplete-file wait: the test times out if the watcher waited for it.
    impatient = watch_settings.model_copy(update={"watch_incomplete_seconds": 600})
    watch = watch_with(impatient)
    write_file(watch.folder / MONTH, b"VendorID,lpep_pickup_datetime\n2,2023-03-01 00:00:00\n")
    rejection = watch.expect_rejected(MONTH, "unreadable-parquet")
    assert "not a parquet file" in rejection.detail
    watch.expect_service_goes_on()


def test_an_impossible_month_is_quarantined(watch: Watch) -> None:
    name = "green_tripdata_2023-13.parquet"
    write_file(watch.folder / name, parquet_bytes(2))
    rejection = watch.expect_rejected(name, "file-name")
    assert "2023-13 is not a month" in rejection.detail
    watch.expect_service_goes_on()


@pytest.mark.parametrize("target", ["outside", "dangling"])
def test_a_symlink_out_of_the_folder_is_quarantined_as_a_link(
    watch: Watch, tmp_path: Path, target: str
) -> None:
    outside = tmp_path / "elsewhere" / "green_tripdata_2023-03.parquet"
    outside.parent.mkdir()
    data = parquet_bytes(3)
    if target == "outside":
        outside.write_bytes(data)
    (watch.folder / MONTH).symlink_to(outside)

    watch.expect_rejected(MONTH, "symlink-outside")
    kept = watch.quarantine_dir / MONTH
    assert kept.is_symlink() and os.readlink(kept) == str(outside)  # the link, not its target
    if target == "outside":
        assert outside.read_bytes() == data  # never moved, never hashed into the ledger
        assert watch.service.ledger.get(sha256(data)) is None
    watch.expect_service_goes_on()


def test_a_file_larger_than_the_limit_is_quarantined_before_hashing(
    watch_with: StartWatch, watch_settings: Settings
) -> None:
    big, good = parquet_bytes(4, rows=20_000), parquet_bytes(99)
    limit = len(good) + 100
    assert len(big) > limit
    watch = watch_with(watch_settings.model_copy(update={"max_file_bytes": limit}))
    write_file(watch.folder / MONTH, big)
    rejection = watch.expect_rejected(MONTH, "too-large")
    assert f"{limit:,}" in rejection.detail
    assert watch.service.ledger.get(sha256(big)) is None
    watch.expect_service_goes_on()


@pytest.mark.parametrize("how", ["made-here", "moved-in"])
def test_a_folder_named_like_a_month_file_is_quarantined(
    watch: Watch, tmp_path: Path, how: str
) -> None:
    if how == "made-here":
        (watch.folder / MONTH).mkdir()
    else:
        staged = tmp_path / "staging" / MONTH
        staged.mkdir(parents=True)
        (staged / "part-0.parquet").write_bytes(parquet_bytes(5))
        os.replace(staged, watch.folder / MONTH)
    watch.expect_rejected(MONTH, "not-a-file")
    assert (watch.quarantine_dir / MONTH).is_dir()
    watch.expect_service_goes_on()


@pytest.mark.parametrize(
    "name",
    ["green_tripdata_2023-03 (1).parquet", "grüen_tripdata_2023-03.parquet", "notes.txt"],
)
def test_names_with_spaces_unicode_or_no_pattern_are_quarantined(watch: Watch, name: str) -> None:
    write_file(watch.folder / name, parquet_bytes(6))
    watch.expect_rejected(name, "file-name")
    watch.expect_service_goes_on()


def test_a_file_deleted_before_its_check_is_logged_and_nothing_is_kept(
    watch_with: StartWatch,
) -> None:
    watch = watch_with(debounce_seconds=0.3)
    path = write_file(watch.folder / MONTH, parquet_bytes(7))
    path.unlink()
    wait_for(lambda: watch.service.stats().vanished >= 1, what="the vanished file noticed")

    info = [r.getMessage() for r in watch.caplog.records if r.levelno == logging.INFO]
    assert any(MONTH in line and "vanished before it was complete" in line for line in info)
    watch.expect_service_goes_on(rejections=0)
    assert quarantined_entries(watch.quarantine_dir) == []
    assert watch.service.ledger.outbox.rejections() == []


def test_a_recorded_file_that_vanishes_before_its_hand_off_is_rejected_once(
    watch: Watch,
) -> None:
    watch.recorder.refusing = True  # Prefect is down: the file stays `seen`
    data = parquet_bytes(8)
    path = write_file(watch.folder / MONTH, data)
    wait_for(lambda: watch.recorder.attempts, what="a failed hand-off")
    assert watch.service.ledger.get(sha256(data)) is not None
    path.unlink()

    [rejection] = wait_for(watch.recorder.rejected, what="the vanished file's alert")
    assert (rejection.path.name, rejection.rule) == (MONTH, "file-vanished")
    assert rejection.quarantined_path is None and rejection.sha256 == sha256(data)
    watch.expect_warning(MONTH, "file-vanished")
    assert watch.service.ledger.get(sha256(data)) is None
    watch.recorder.refusing = False
    watch.expect_service_goes_on()
    assert watch.recorder.shas() == [sha256(parquet_bytes(99))]


# --- waiting, retrying, sharing ---------------------------------------------------------------
def test_a_slow_writer_that_keeps_writing_is_not_quarantined(
    watch_with: StartWatch, watch_settings: Settings
) -> None:
    watch = watch_with(watch_settings.model_copy(update={"watch_incomplete_seconds": 1.0}))
    data = parquet_bytes(9, rows=20_000)
    chunks = 8
    size = len(data) // chunks + 1
    started = time.monotonic()
    with (watch.folder / MONTH).open("wb") as handle:
        for index in range(chunks):
            handle.write(data[index * size : (index + 1) * size])
            handle.flush()
            if index < chunks - 1:
                # Pause until the watcher saw the torn file steady, then write on.
                seen = watch.service.stats().incomplete

                def checked_again(seen: int = seen) -> bool:
                    return watch.service.stats().incomplete > seen

                wait_for(checked_again, what="a check of the paused writer's file")
    assert time.monotonic() - started > 1.0  # longer than the incomplete-file wait in all

    wait_for(lambda: watch.recorder.calls, what="the hand-off")
    assert watch.recorder.shas() == [sha256(data)]
    assert watch.recorder.rejected() == [] and watch.service.stats().rejected == 0
    assert quarantined_entries(watch.quarantine_dir) == []


def test_a_failed_rejection_alert_is_retried_until_sent_once(
    make_service: ServiceFactory, watch_settings: Settings
) -> None:
    flaky = RecordingSubmitter(fail_announcements=3)
    service = make_service(flaky)
    service.start()
    write_file(watch_settings.incoming_dir / "notes.txt", b"hello")

    wait_for(lambda: service.stats().alerts_sent, what="the rejection alert recorded as sent")
    assert len(flaky.rejected()) == 1 and len(flaky.announce_attempts) == 4
    gaps = [
        b - a for a, b in zip(flaky.announce_attempts, flaky.announce_attempts[1:], strict=False)
    ]
    assert all(gap >= expected * 0.9 for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True))
    [recorded] = service.ledger.outbox.rejections()
    assert recorded.alert_sent_at is not None and recorded.alert_attempts == 3
    stats = service.stats()
    assert (stats.alert_failures, stats.alerts_sent, stats.rejected) == (3, 1, 1)

    data = parquet_bytes(10)
    write_file(watch_settings.incoming_dir / MONTH, data)
    wait_for(lambda: flaky.calls, what="the next file's hand-off")
    assert len(flaky.rejected()) == 1 and len(flaky.announce_attempts) == 4


def test_a_rejection_alert_pending_at_stop_is_sent_by_the_next_watcher(
    make_service: ServiceFactory, watch_settings: Settings
) -> None:
    down = RecordingSubmitter(fail_announcements=10**6)
    first = make_service(down)
    first.start()
    write_file(watch_settings.incoming_dir / "notes.txt", b"hello")
    wait_for(lambda: down.announce_attempts, what="a failed alert")
    first.stop()
    [pending] = Ledger(watch_settings.ledger_path).outbox.rejections()
    assert pending.alert_sent_at is None

    up = RecordingSubmitter()
    make_service(up).start()
    [sent] = wait_for(up.rejected, what="the pending alert sent after restart")
    assert sent.id == pending.id


def test_an_entry_quarantined_by_a_watcher_that_died_before_recording_it_still_alerts(
    make_service: ServiceFactory, watch_settings: Settings
) -> None:
    # The first half of a rejection, as a watcher killed between the move and the ledger
    # write leaves it: the entry and its reason file in quarantine, nothing in the ledger.
    from taxiops.errors import DataValidationError, ValidationRule
    from taxiops.intake._rejections import record_unrecorded_quarantine
    from taxiops.intake.quarantine import REASON_SUFFIX, quarantine

    bad = write_file(watch_settings.incoming_dir / "notes.txt", b"hello")
    error = DataValidationError(bad, ValidationRule.FILE_NAME, "not a month file")
    moved = quarantine(error, watch_settings.quarantine_dir.resolve(), by="watcher gone:1:x")
    assert moved is not None
    long_ago = time.time() - 60
    os.utime(moved.path.with_name(moved.path.name + REASON_SUFFIX), (long_ago, long_ago))

    recorder = RecordingSubmitter()
    make_service(recorder).start()
    [sent] = wait_for(recorder.rejected, what="the alert of the unrecorded quarantine")
    assert (sent.path, sent.quarantined_path, sent.rule) == (bad, moved.path, "file-name")
    # Another pass (every watcher makes one per poll) records nothing twice.
    ledger = Ledger(watch_settings.ledger_path)
    assert (
        record_unrecorded_quarantine(
            ledger.outbox, watch_settings.quarantine_dir, older_than_seconds=0
        )
        == []
    )
    assert len(ledger.outbox.rejections()) == 1


def test_an_unwritable_quarantine_leaves_the_file_and_retries(
    watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = watch.quarantine_dir
    blocker.write_text("a file where the quarantine folder should be")
    name = "notes.txt"
    write_file(watch.folder / name, b"hello")

    def error_logged() -> bool:
        return any(
            r.levelno == logging.ERROR
            and name in r.getMessage()
            and "left where it is" in r.getMessage()
            for r in caplog.records
        )

    wait_for(error_logged, what="an error naming the file")
    assert (watch.folder / name).read_bytes() == b"hello"
    assert watch.recorder.rejected() == []

    blocker.unlink()
    watch.expect_rejected(name, "file-name")
    watch.expect_service_goes_on()


def test_two_watchers_on_one_folder_quarantine_and_alert_once(
    make_service: ServiceFactory, recorder: RecordingSubmitter, watch_settings: Settings
) -> None:
    first, second = make_service(recorder), make_service(recorder)
    first.start()
    second.start()
    names = ["notes.txt", "green_tripdata_2023-13.parquet", "green_tripdata_2023-03 (1).parquet"]
    for seed, name in enumerate(names):
        write_file(watch_settings.incoming_dir / name, parquet_bytes(100 + seed))
    ledger = Ledger(watch_settings.ledger_path)
    wait_for(
        lambda: (
            len(ledger.outbox.rejections()) == 3
            and all(r.alert_sent_at is not None for r in ledger.outbox.rejections())
        ),
        what="three rejections, alerts sent",
    )
    first.stop()
    second.stop()

    assert first.stats().rejected + second.stats().rejected == 3
    kept = quarantined_entries(watch_settings.quarantine_dir)
    assert sorted(path.name for path in kept) == sorted(names)
    # Both may send a pending alert; the event id is the rejection id, so the server keeps one.
    assert {r.id for r in recorder.rejected()} == {r.id for r in ledger.outbox.rejections()}


def test_the_polling_observer_sees_folders_and_dangling_links_too(
    watch_with: StartWatch, watch_settings: Settings, tmp_path: Path
) -> None:
    watch = watch_with(watch_settings.model_copy(update={"watch_polling": True}))
    assert watch.service.uses_polling
    (watch.folder / MONTH).symlink_to(tmp_path / "nowhere.parquet")
    (watch.folder / "green_tripdata_2023-04.parquet").mkdir()
    watch.expect_rejected(MONTH, "symlink-outside")
    watch.expect_rejected("green_tripdata_2023-04.parquet", "not-a-file")
    watch.expect_service_goes_on(rejections=2)


def test_status_lists_quarantined_entries(watch: Watch) -> None:
    write_file(watch.folder / "grüen_tripdata_2023-03.parquet", parquet_bytes(11))
    watch.expect_rejected("grüen_tripdata_2023-03.parquet", "file-name")
    watch.service.stop()

    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "grüen" in line]
    # Prefect accepted the event; no channel has delivered it (this test has no dispatcher).
    assert "file-name" in line and "announced" in line
    assert str(watch.quarantine_dir / "grüen_tripdata_2023-03.parquet") in line
