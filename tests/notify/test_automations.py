"""Automations on a real Prefect server, delivering to the local Slack-compatible inbox.

The server's trigger and action services do the sending, so these tests wait on
the inbox with timeouts. Every server-side test filters messages by its own flow
run (or taxi type), since automations are server-wide and tests share the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flows.train import train_duration_model
from prefect import flow
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.events import Event, emit_event
from prefect.states import Running

from taxiops import names
from taxiops.app.server import LocalPrefectServer
from taxiops.errors import AutomationSpecError
from taxiops.ml import write_synth_month
from taxiops.notify import InboxMessage, SlackInbox
from taxiops.notify.automations import (
    AUTOMATIONS_DIR,
    automation_name,
    load_automations,
    set_up_alerting,
)
from taxiops.notify.dispatch import dispatching
from taxiops.payloads import DataRejected, MonthMissing
from taxiops.pipeline.tasks import taxiops_task
from taxiops.settings import Settings
from taxiops.tripfile import Month

DELIVERY_TIMEOUT = 60.0


@pytest.fixture
def inbox() -> Iterator[SlackInbox]:
    with SlackInbox(echo=False) as box:
        yield box


@pytest.fixture
def alerting(
    settings: Settings,
    prefect_server: LocalPrefectServer,
    inbox: SlackInbox,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """Notifier block pointing at this test's inbox (Slack + apprise), automations applied
    with short windows (12 s without data, 10 s without a heartbeat), and the dispatcher
    delivering what the block queues, as `taxiops up` runs it."""
    monkeypatch.setenv("SLACK_WEBHOOK_URL", inbox.url)
    monkeypatch.setenv("TAXIOPS_APPRISE_URLS", inbox.apprise_url)
    monkeypatch.setenv("TAXIOPS_MISSING_DATA_DAYS", str(12 / 86_400))
    monkeypatch.setenv("TAXIOPS_SILENT_RUN_SECONDS", "10")
    # Each alert on its own, the sentinels of `wait_until_drained` included.
    monkeypatch.setenv("TAXIOPS_ALERT_STORM_COUNT", "1000")
    configured = Settings()
    asyncio.run(_apply(configured, prefect_server.ui_url))
    with dispatching(configured):
        yield configured
    # Automations are server-wide: put the default windows back for later tests.
    asyncio.run(
        _apply(
            configured.model_copy(update={"missing_data_days": 35.0, "silent_run_seconds": 90.0}),
            prefect_server.ui_url,
        )
    )


async def _apply(settings: Settings, ui_url: str) -> Any:
    async with get_client() as client:
        return await set_up_alerting(client, settings, ui_url)


def messages_about(inbox: SlackInbox, needle: str, endpoint: str = "webhook") -> list[InboxMessage]:
    return [
        m
        for m in inbox.messages
        if m.endpoint == endpoint and needle in (m.text or "") + str(m.blocks) + str(m.payload)
    ]


def wait_for_messages(
    inbox: SlackInbox, needle: str, count: int = 1, endpoint: str = "webhook"
) -> list[InboxMessage]:
    """Wait until `count` messages mention `needle`, then until a sentinel sent after them
    arrived (`wait_until_drained`): a duplicate queued before it would have arrived too."""
    wait_until(
        inbox,
        lambda: len(messages_about(inbox, needle, endpoint)) >= count,
        f"{count} message(s) about {needle!r} at {endpoint}",
    )
    wait_until_drained(inbox, endpoint)
    return messages_about(inbox, needle, endpoint)


def wait_until(inbox: SlackInbox, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            seen = "\n".join(m.describe() for m in inbox.messages)
            raise TimeoutError(f"timed out waiting for {what}; inbox:\n{seen}")
        time.sleep(0.1)


def wait_until_drained(inbox: SlackInbox, endpoint: str) -> None:
    """Emit a rejection event for a sentinel file and wait for its message at `endpoint`.

    It takes the path every alert takes: the server's trigger and action services (each
    consumes its queue in order), the notifier block, the outbox, the dispatcher (in order
    of arrival per channel, storms off in `alerting`). So once it arrived, every alert that
    was on its way before it was delivered: what has not arrived was never sent.
    """
    sentinel = f"sentinel-{uuid.uuid4().hex[:12]}.txt"
    event = Event(
        id=uuid.uuid4(),
        event=names.DATA_REJECTED,
        resource=names.file_resource(sentinel),
        payload=DataRejected.for_file(sentinel, "file-name", "sentinel", None, None).model_dump(
            mode="json"
        ),
    )
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")])
    wait_until(
        inbox, lambda: bool(messages_about(inbox, sentinel, endpoint)), f"the sentinel {sentinel}"
    )


@pytest.fixture
def months(alerting: Settings) -> dict[str, Path]:
    return {
        label: write_synth_month(
            alerting.incoming_dir, "green", Month.parse(label), rows=4_000, seed=i
        )
        for i, label in enumerate(["2023-01", "2023-02"])
    }


def test_applying_twice_leaves_one_copy_and_a_changed_file_updates(
    alerting: Settings, prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    again = asyncio.run(_apply(alerting, prefect_server.ui_url))
    assert again.created == [] and again.updated == [] and again.duplicates_deleted == 0
    assert len(again.unchanged) == len(list(AUTOMATIONS_DIR.glob("*.yaml")))

    edited = tmp_path / "automations"
    shutil.copytree(AUTOMATIONS_DIR, edited)
    path = edited / "model-trained.yaml"
    path.write_text(
        path.read_text().replace("description: A training", "description: Edited. A training")
    )

    async def apply_edited() -> Any:
        async with get_client() as client:
            return await set_up_alerting(client, alerting, prefect_server.ui_url, folder=edited)

    report = asyncio.run(apply_edited())
    assert report.updated == ["taxiops / model trained"] and report.created == []

    (edited / "no-new-data.yaml").unlink()  # a file removed: its automation goes too
    pruned = asyncio.run(apply_edited())
    assert pruned.removed == ["taxiops / no new data"]

    async def names() -> list[str]:
        async with get_client() as client:
            return [a.name for a in await client.read_automations()]

    all_names = asyncio.run(names())
    assert "taxiops / no new data" not in all_names
    for name in pruned.unchanged:
        assert all_names.count(name) == 1
    asyncio.run(_apply(alerting, prefect_server.ui_url))  # restore the real files


def test_every_file_loads_as_an_automation(settings: Settings) -> None:
    loaded = load_automations(settings, uuid.uuid4())
    assert {a.name for a in loaded} >= {
        "taxiops / model trained",
        "taxiops / run failed",
        "taxiops / data rejected",
        "taxiops / month missing",
        "taxiops / no new data",
        "taxiops / silent run",
    }
    assert all(len(a.actions) == 1 for a in loaded)


def test_file_automation_and_readme_use_one_name(settings: Settings, tmp_path: Path) -> None:
    import uuid

    files = sorted(AUTOMATIONS_DIR.glob("*.yaml"))
    loaded = load_automations(settings, uuid.uuid4())
    assert [a.name for a in loaded] == [automation_name(path) for path in files]
    readme = (AUTOMATIONS_DIR.parent / "README.md").read_text()
    assert [p.name for p in files if f"| `{p.name}` |" not in readme] == []

    shutil.copy(AUTOMATIONS_DIR / "no-new-data.yaml", tmp_path / "data-stale.yaml")
    with pytest.raises(AutomationSpecError, match="name must be 'taxiops / data stale'"):
        load_automations(settings, uuid.uuid4(), folder=tmp_path)


def test_a_good_month_sends_one_success_message_with_metrics_and_link(
    months: dict[str, Path], inbox: SlackInbox, prefect_server: LocalPrefectServer
) -> None:
    summary = train_duration_model(new_file=str(months["2023-02"]))
    run_id = summary.flow_run_id or ""

    slack = wait_for_messages(inbox, run_id)
    apprise = wait_for_messages(inbox, run_id, endpoint="apprise")

    assert len(slack) == 1
    message = slack[0]
    assert f"{summary.rmse:.3f}" in str(message.blocks)
    assert f"{prefect_server.ui_url}/runs/flow-run/{run_id}" in message.button_urls
    assert len(apprise) == 1


def test_a_failing_run_with_retries_sends_exactly_one_failure_message(
    alerting: Settings, inbox: SlackInbox
) -> None:
    attempts = {"n": 0}

    @taxiops_task("read-flaky-storage")
    def read_flaky_storage() -> None:
        attempts["n"] += 1
        raise ConnectionResetError("storage went away")

    @flow(name=names.TRAIN_FLOW)
    def doomed() -> None:
        read_flaky_storage.with_options(
            retries=2, retry_delay_seconds=0, cache_policy=NO_CACHE, persist_result=False
        )()

    state: State[Any] = doomed(return_state=True)
    run_id = str(state.state_details.flow_run_id)

    failures = wait_for_messages(inbox, run_id)
    assert attempts["n"] == 3
    assert len(failures) == 1
    assert "storage went away" in str(failures[0].blocks)


def test_a_rejected_file_sends_one_rejection_and_no_failure(
    months: dict[str, Path], inbox: SlackInbox
) -> None:
    bad = months["2023-02"].with_name("green_tripdata_2023-05.parquet")
    bad.write_bytes(b"PAR1 this is not parquet")

    state: State[Any] = train_duration_model(new_file=str(bad), return_state=True)

    assert state.name == names.REJECTED_STATE
    rejections = wait_for_messages(inbox, bad.name)
    assert len(rejections) == 1
    assert "unreadable-parquet" in str(rejections[0].blocks)
    # The rejection is the only message about this run: the failure automation stays quiet.
    assert len(messages_about(inbox, str(state.state_details.flow_run_id))) == 1


CRASHING_FLOW = textwrap.dedent(
    f"""
    import time
    from prefect import flow

    @flow(name={names.TRAIN_FLOW!r})
    def long_training():
        print("started", flush=True)
        time.sleep(120)

    long_training()
    """
)


def test_a_crashed_flow_process_sends_one_message(alerting: Settings, inbox: SlackInbox) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_FLOW],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
    )
    assert process.stdout is not None
    output: list[str] = []
    for line in process.stdout:
        output.append(line)
        if "started" in line:
            break
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    run_id = next(line.rsplit("/", 1)[-1].strip() for line in output if "/runs/flow-run/" in line)

    crashes = wait_for_messages(inbox, run_id)
    assert len(crashes) == 1 and "Crashed" in str(crashes[0].blocks)


def test_slack_answering_500_then_200_delivers_once(
    months: dict[str, Path], inbox: SlackInbox
) -> None:
    inbox.respond_next(500, endpoint="webhook")

    summary = train_duration_model(new_file=str(months["2023-02"]))

    delivered = wait_for_messages(inbox, summary.flow_run_id or "")
    assert len(delivered) == 1
    # The 500, the retry that landed, and the sentinel of `wait_until_drained`.
    assert inbox.requests_to("webhook") == 3


def test_a_missing_month_from_the_schedule_sends_one_message(
    alerting: Settings, inbox: SlackInbox
) -> None:
    emit_event(
        event=names.MONTH_MISSING,
        resource={
            "prefect.resource.id": names.taxi_type_resource_id("yellow"),
            "prefect.resource.name": "yellow",
        },
        payload=MonthMissing(
            taxi_type="yellow",
            expected_month="2031-07",
            newest_month="2031-05",
            days_since=40,
            folder=str(alerting.incoming_dir),
        ).model_dump(mode="json"),
    )

    missing = wait_for_messages(inbox, "2031-07")
    assert len(missing) == 1


def test_no_new_data_within_the_window_sends_a_proactive_message(
    alerting: Settings, inbox: SlackInbox
) -> None:
    emit_event(
        event=names.DATA_ARRIVED,
        resource=names.month_resource("purple", "2031-01", "purple_tripdata_2031-01.parquet"),
        payload={"taxi_type": "purple"},
    )

    stale = wait_for_messages(inbox, "purple")
    assert len(stale) == 1


def test_no_secret_appears_in_logs(
    months: dict[str, Path],
    inbox: SlackInbox,
    prefect_server: LocalPrefectServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox.respond_next(500, endpoint="webhook")
    summary = train_duration_model(new_file=str(months["2023-02"]))
    wait_for_messages(inbox, summary.flow_run_id or "")

    server_log = (prefect_server.state_dir / "server.log").read_text(errors="replace")
    assert inbox.token not in caplog.text
    assert inbox.token not in server_log


def test_a_failure_message_names_the_failed_task_and_error(
    months: dict[str, Path], alerting: Settings, inbox: SlackInbox
) -> None:
    artifacts = alerting.mlflow_artifacts_dir
    assert artifacts is not None
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text("not a folder")  # where the model files go

    state: State[Any] = train_duration_model(new_file=str(months["2023-02"]), return_state=True)

    (failure,) = wait_for_messages(inbox, str(state.state_details.flow_run_id))
    assert failure.fields.get("Failed task") == "register-challenger", failure.fields
    assert "Not a directory" in str(failure.blocks) or "File exists" in str(failure.blocks)


@flow(name=names.TRAIN_FLOW)
def _silent_training() -> None:
    """Never runs: stands for a run whose process died after its last heartbeat."""


def test_a_run_whose_heartbeats_stop_is_marked_crashed_server_side_and_alerts(
    alerting: Settings, inbox: SlackInbox
) -> None:
    """No process reports this crash: the server notices the silence, as when a machine dies."""
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(names.TRAIN_FLOW)
        flow_run = client.create_flow_run(flow=_silent_training, state=Running())
    emit_event(
        event="prefect.flow-run.heartbeat",
        resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}"},
        related=[
            {
                "prefect.resource.id": f"prefect.flow.{flow_id}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": names.TRAIN_FLOW,
            }
        ],
    )

    (alert,) = wait_for_messages(inbox, str(flow_run.id))

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.name == "Crashed" and "heartbeat" in (state.message or "")
    assert "Crashed" in str(alert.blocks)


def test_the_cli_applies_the_automations_idempotently(
    alerting: Settings, prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    def apply() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "taxiops", "automations", "apply"],
            cwd=tmp_path,
            env={**os.environ},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    apply()
    second = apply()

    lines = second.strip().splitlines()
    assert len(lines) == len(list(AUTOMATIONS_DIR.glob("*.yaml")))
    assert all(line.startswith("unchanged") for line in lines), second
