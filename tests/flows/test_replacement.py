"""A month file replaced under a run, at several moments: what the run records (summary,
model card, the outcome the watcher's ledger takes from the run's state) always names
the bytes it trained on. Real files, real flow runs on the test server.

The replacements between reading and loading, and during training, are timed by wrapping
the real function that runs at that moment (`MonthBytes.read`, `train_model`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flows.train import train_duration_model
from prefect.events import emit_event

from taxiops import names
from taxiops.intake import RunStatus, outcome_from_state
from taxiops.intake.quarantine import quarantined_entries
from taxiops.ml import write_synth_month
from taxiops.pipeline import lineage
from taxiops.pipeline.report import TrainingSummary
from taxiops.registry import ModelRegistry
from taxiops.settings import Settings
from taxiops.tripfile import Month, sha256_of

from .conftest import SYNTH_ROWS, events_since, wait_for
from .test_rejections import missing_column

NEW_ROWS = 3_000
NAME = "green_tripdata_2023-02.parquet"


def replace_month(folder: Path) -> str:
    """Put other bytes (other trips, `NEW_ROWS` of them) at the month's path; their sha256."""
    return sha256_of(write_synth_month(folder, "green", Month(2023, 2), rows=NEW_ROWS, seed=77))


def assert_records_what_it_trained(
    settings: Settings, summary: TrainingSummary, sha256: str, rows: int
) -> None:
    """Summary and model card name `sha256`, and the validation rows are those bytes' rows."""
    validated = summary.months[-1]
    assert (validated.file, validated.sha256, validated.rows_read) == (NAME, sha256, rows)
    version = ModelRegistry.from_settings(settings).version("green", int(summary.model_version[1:]))
    assert version.card.data_sha256[NAME] == sha256
    assert version.card.val_rows == summary.val_rows <= rows


@contextmanager
def replaced_after_first_call(
    owner: Any, attribute: str, replace: Callable[[], object]
) -> Iterator[list[int]]:
    """Wrap `owner.attribute` so the file is replaced right after its first call returns
    (yields the calls' count, to check the moment was reached)."""
    real = getattr(owner, attribute)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            replace()
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, attribute, wrapper)
        yield calls


def no_rejection_event_since(since: datetime, name: str) -> bool:
    """Whether no `taxiops.data.rejected` about `name` was stored since `since`: proved by a
    sentinel event sent after the run's events, on the same worker, being stored first."""
    from prefect.events.worker import EventsWorker

    resource = names.file_resource(name)
    sentinel = f"taxiops.test.sentinel.{uuid.uuid4().hex}"
    emit_event(event=sentinel, resource=resource)
    EventsWorker.drain_all(timeout=10)
    wait_for(
        lambda: events_since(since, resource["prefect.resource.id"], sentinel),
        what="the sentinel event",
    )
    return events_since(since, resource["prefect.resource.id"], names.DATA_REJECTED) == []


def test_replaced_before_the_run_read_it_the_run_trains_and_records_the_new_bytes(
    settings: Settings, months: dict[str, Path]
) -> None:
    new_sha = replace_month(settings.incoming_dir)

    summary = train_duration_model(str(months["2023-02"]))

    assert_records_what_it_trained(settings, summary, new_sha, NEW_ROWS)


def test_replaced_before_a_watcher_run_read_it_the_run_ends_file_changed_without_an_alert(
    settings: Settings, months: dict[str, Path]
) -> None:
    old_sha = sha256_of(months["2023-02"])
    new_sha = replace_month(settings.incoming_dir)
    since = datetime.now(UTC)

    state = train_duration_model(str(months["2023-02"]), expected_sha256=old_sha, return_state=True)

    message = state.message or ""
    assert state.name == names.REJECTED_STATE and "file-changed" in message
    assert f"{old_sha[:12]} -> {new_sha[:12]}" in message
    assert "newer bytes are trained in a run of their own" in message
    assert message.count("run of their own") == 1  # said once, by the hint
    # The ledger records the old bytes as rejected (never trained), not succeeded.
    outcome = outcome_from_state(state.type.value, state.name, state.message)
    assert outcome.status is RunStatus.REJECTED
    assert (
        sha256_of(months["2023-02"]) == new_sha
        and quarantined_entries(settings.quarantine_dir) == []
    )
    assert no_rejection_event_since(since, NAME)
    assert not ModelRegistry.from_settings(settings).versions("green")  # nothing recorded


def test_replaced_between_reading_and_loading_the_run_trains_the_bytes_it_read(
    settings: Settings, months: dict[str, Path]
) -> None:
    old_sha = sha256_of(months["2023-02"])
    replace = lambda: replace_month(settings.incoming_dir)  # noqa: E731

    with replaced_after_first_call(lineage.MonthBytes, "read", replace) as calls:
        summary = train_duration_model(str(months["2023-02"]), train_files=[])

    assert calls and sha256_of(months["2023-02"]) != old_sha
    assert_records_what_it_trained(settings, summary, old_sha, SYNTH_ROWS)


def test_replaced_during_training_the_record_names_the_bytes_trained_and_the_new_bytes_get_their_own_version(
    settings: Settings, months: dict[str, Path]
) -> None:
    import taxiops.ml.model

    old_sha = sha256_of(months["2023-02"])
    new: list[str] = []

    with replaced_after_first_call(
        taxiops.ml.model, "train_model", lambda: new.append(replace_month(settings.incoming_dir))
    ) as calls:
        first = train_duration_model(str(months["2023-02"]))

    assert calls and new
    assert_records_what_it_trained(settings, first, old_sha, SYNTH_ROWS)
    # The run for the newer bytes (the watcher's next hand-off) trains the same January
    # but is judged on other bytes: a version of its own, never the first one reused.
    second = train_duration_model(str(months["2023-02"]), expected_sha256=new[0])
    assert_records_what_it_trained(settings, second, new[0], NEW_ROWS)
    assert second.model_version != first.model_version
    cards = [v.card for v in ModelRegistry.from_settings(settings).versions("green")]
    assert len({card.model_key for card in cards}) == len(cards) == 2
    # The same weights as production: no second "New champion" for them.
    assert len({card.training_key for card in cards}) == 1
    assert not second.promoted and second.production_version == first.model_version
    assert f"the same training as {first.model_version}" in second.promotion_reason


def test_bad_bytes_replaced_by_good_ones_before_the_verdict_are_neither_quarantined_nor_alerted(
    settings: Settings, months: dict[str, Path]
) -> None:
    months["2023-02"].unlink()
    bad = missing_column(settings.incoming_dir).rename(months["2023-02"])
    replace = lambda: replace_month(settings.incoming_dir)  # noqa: E731
    since = datetime.now(UTC)

    with replaced_after_first_call(lineage.MonthBytes, "read", replace):
        state = train_duration_model(str(bad), train_files=[], return_state=True)

    message = state.message or ""
    assert state.name == names.REJECTED_STATE and "missing-column" in message
    assert "the file now holds newer bytes (the watcher trains them" in message
    assert bad.is_file() and quarantined_entries(settings.quarantine_dir) == []
    assert no_rejection_event_since(since, NAME)
