"""Row bombs: a small file whose footer declares more rows than `TAXIOPS_MAX_FILE_ROWS` is
refused from the footer alone, quarantined with its reason and alerted on once, whether
the training flow meets it (`taxiops train`) or the watcher does. Real server, real folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from flows.train import train_duration_model

from taxiops import names
from taxiops.intake import PrefectSubmitter, WatcherService
from taxiops.intake.quarantine import read_reason
from taxiops.ml import synth_month, write_repeated
from taxiops.pipeline.lineage import MonthBytes
from taxiops.settings import Settings
from taxiops.tripfile import Month

from .conftest import events_since, task_runs_of, wait_for
from .test_rejections import rejected_run, the_one_rejection_event

BOMB = "green_tripdata_2023-03.parquet"
LIMIT = 1_000_000
BOMB_ROWS = 3 * LIMIT


def write_bomb(folder: Path) -> Path:
    """`BOMB_ROWS` copies of one valid trip: a few hundred KB on disk, a valid schema."""
    trip = pa.Table.from_pandas(
        synth_month("green", Month(2023, 3), rows=20, seed=5), preserve_index=False
    ).slice(2, 1)
    return write_repeated(folder / BOMB, trip, BOMB_ROWS, rows_per_group=LIMIT)


@pytest.fixture
def small_limit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TAXIOPS_MAX_FILE_ROWS", str(LIMIT))
    return settings.model_copy(update={"max_file_rows": LIMIT})


def test_the_flow_refuses_a_row_bomb_from_its_footer_quarantines_it_and_alerts_once(
    small_limit: Settings, months: dict[str, Path]
) -> None:
    bomb = write_bomb(small_limit.incoming_dir)
    sha256 = MonthBytes.read(bomb, max_bytes=small_limit.max_file_bytes).file.sha256
    since = datetime.now(UTC)

    state, run_id = rejected_run(bomb)

    detail = f"its parquet footer declares {BOMB_ROWS:,} rows, more than the limit of {LIMIT:,}"
    assert (state.message or "").startswith(f"{BOMB}: too-many-rows: {detail}")
    reason = read_reason(small_limit.quarantine_dir / BOMB)
    assert reason["rule"] == "too-many-rows" and reason["sha256"] == sha256
    assert "TAXIOPS_MAX_FILE_ROWS" in str(reason["hint"])
    the_one_rejection_event(since, run_id, BOMB)
    loads = [t for t in task_runs_of(run_id) if t.name.startswith("load-month")]
    [failed] = [t for t in loads if t.state is not None and t.state.is_failed()]
    assert failed.run_count == 1  # refused, not retried


def test_the_watcher_refuses_a_row_bomb_before_hand_off_and_alerts_once(
    small_limit: Settings, prefect_server: Any
) -> None:
    service = WatcherService(
        small_limit.model_copy(update={"watch_settle_seconds": 0.2}),
        PrefectSubmitter(prefect_server.api_url),
        poll_runs_every_seconds=0.1,
        debounce_seconds=0.05,
    )
    since = datetime.now(UTC)
    service.start()
    try:
        bomb = write_bomb(small_limit.incoming_dir)
        kept = small_limit.quarantine_dir / BOMB
        wait_for(kept.exists, what="the bomb in quarantine")
        file_id = names.file_resource(BOMB)["prefect.resource.id"]
        [event] = wait_for(
            lambda: events_since(since, file_id, names.DATA_REJECTED), what="the rejection event"
        )
        assert event.payload["rule"] == "too-many-rows"
        assert f"declares {BOMB_ROWS:,} rows" in event.payload["detail"]
        assert not bomb.exists() and read_reason(kept)["rule"] == "too-many-rows"
        assert service.ledger.entries() == []  # never recorded, never handed off
        assert service.stats().rejected == 1
    finally:
        service.stop()


def test_a_month_under_the_limit_still_trains(
    small_limit: Settings, months: dict[str, Path]
) -> None:
    summary = train_duration_model(str(months["2023-02"]))
    assert summary.val_rows > 0 and summary.months[-1].rows_read < LIMIT
