"""The alert outbox and its dispatcher against the real loopback inbox, switched between
up, down (closed port), HTTP 500 and Slack-like pacing (429 Retry-After)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr

from taxiops.notify import DataRejected, Notice, NoticeKind, SlackInbox, TaxiopsNotifier
from taxiops.notify.dispatch import Dispatcher, grouped_message
from taxiops.notify.outbox import Alert, Outbox
from taxiops.settings import Settings
from tests.e2e.harness import wait_until
from tests.notify.notify_helpers import UI_URL, trained_notice

FAST = {
    "alert_send_interval_seconds": 1.0,
    "alert_retry_max_seconds": 0.5,
    "alert_storm_count": 3,
    "alert_storm_window_seconds": 3.0,
}


def _settings(settings: Settings, **more: object) -> Settings:
    return settings.model_copy(update={**FAST, **more})


def _notifier(inbox: SlackInbox, settings: Settings) -> TaxiopsNotifier:
    return TaxiopsNotifier(
        slack_webhook_url=SecretStr(inbox.url),
        ui_url=UI_URL,
        outbox_path=str(settings.outbox_path),
    )


def _rejected(number: int, rule: str = "schema") -> str:
    facts = DataRejected(path=f"/in/junk_{number:03d}.parquet", rule=rule, detail="bad")
    notice = Notice(kind=NoticeKind.REJECTED, facts=facts, event_id=str(uuid.uuid4()))
    return notice.model_dump_json()


def _trained() -> str:
    notice = trained_notice(ui_url=None)
    return notice.model_copy(update={"event_id": str(uuid.uuid4())}).model_dump_json()


@contextmanager
def _dispatching(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="test-dispatcher")
    thread.start()
    try:
        yield dispatcher
    finally:
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive()


def test_notify_queues_once_per_event_and_sends_nothing_itself(
    inbox: SlackInbox, settings: Settings
) -> None:
    settings = _settings(settings)
    notifier = _notifier(inbox, settings)
    body = _trained()

    asyncio.run(notifier.notify(body))
    asyncio.run(notifier.notify(body))  # the action fired again for the same event

    assert len(Outbox(settings.outbox_path).alerts()) == 1
    assert inbox.request_count == 0  # the block only queues: the dispatcher sends
    with _dispatching(Dispatcher(settings, notifier)):
        inbox.wait_for(1)
        wait_until(
            lambda: Outbox(settings.outbox_path).counts().sent == 1, 5, "the alert marked sent"
        )
    assert len(inbox.messages) == 1
    assert "New champion: green 2023-03" in (inbox.messages[0].header or "")


def test_channel_down_then_500_then_up_delivers_every_alert_once(
    inbox: SlackInbox, settings: Settings
) -> None:
    settings = _settings(settings)
    notifier = _notifier(inbox, settings)
    outbox = Outbox(settings.outbox_path)
    inbox.set_mode("down")
    bodies = [_trained(), _rejected(1)]
    for body in bodies:
        asyncio.run(notifier.notify(body))
    with _dispatching(Dispatcher(settings, notifier)):
        wait_until(_attempts_at_least(outbox, 2), 20, "two failed attempts while down")
        inbox.set_mode("error")
        requests = inbox.request_count
        wait_until(lambda: inbox.request_count >= requests + 2, 20, "tries answered 500")
        assert outbox.counts().pending == 2  # a 500 is not "sent"
        inbox.set_mode("up")
        inbox.wait_for(2, timeout=20)
        wait_until(lambda: outbox.counts().sent == 2, 5, "both alerts marked sent")
    assert len(inbox.messages) == 2
    assert inbox.busiest_second() <= 1


def _attempts_at_least(outbox: Outbox, count: int) -> Callable[[], bool]:
    def check() -> bool:
        with sqlite3.connect(outbox.path) as db:
            tried = db.execute("SELECT COALESCE(SUM(attempts), 0) FROM deliveries").fetchone()[0]
        return int(tried) >= count

    return check


def test_storm_is_grouped_paced_and_does_not_delay_other_kinds(
    inbox: SlackInbox, settings: Settings
) -> None:
    settings = _settings(settings)
    notifier = _notifier(inbox, settings)
    inbox.set_mode("paced")  # like Slack: a second post within a second is answered 429
    for number in range(12):
        asyncio.run(notifier.notify(_rejected(number, rule="schema" if number % 2 else "name")))
    trained = _trained()
    asyncio.run(notifier.notify(trained))

    started = time.monotonic()
    with _dispatching(Dispatcher(settings, notifier)):
        messages = inbox.wait_for(5, timeout=20)  # 3 single + trained + 1 grouped
        wait_until(lambda: Outbox(settings.outbox_path).counts().pending == 0, 5, "all settled")
    headers = [m.header or "" for m in messages]
    trained_at = next(i for i, h in enumerate(headers) if "New champion" in h)
    assert trained_at == 0, headers  # the storm's kind waits; the trained month goes first
    assert sum("File rejected" in h for h in headers) == 3
    grouped = [m for m in messages if "9 more files rejected" in (m.header or "")]
    assert len(grouped) == 1, headers
    text = grouped[0].describe()
    assert "schema" in text and "name" in text and "taxiops status" in text
    assert f"{UI_URL}/events" in str(grouped[0].blocks)
    assert len(inbox.messages) == 5
    assert inbox.busiest_second() <= 1
    assert time.monotonic() - started >= 3.0  # the group waited out its window
    counts = Outbox(settings.outbox_path).counts()
    assert (counts.sent, counts.grouped) == (13, 9)


def test_alert_past_max_age_is_undeliverable_and_reported_once(
    inbox: SlackInbox, settings: Settings
) -> None:
    settings = _settings(settings, alert_max_age_seconds=2.0)
    notifier = _notifier(inbox, settings)
    outbox = Outbox(settings.outbox_path)
    inbox.set_mode("down")
    body = _rejected(7)
    asyncio.run(notifier.notify(body))
    event_id = Notice.from_json(body).event_id
    assert event_id is not None
    reported: list[tuple[Alert, list[str]]] = []
    dispatcher = Dispatcher(settings, notifier, report=lambda a, e: reported.append((a, e)))

    with _dispatching(dispatcher):
        wait_until(lambda: reported, 15, "the undeliverable report")
        inbox.set_mode("up")
        # Another alert passes, so the dispatcher has had passes after the expiry.
        asyncio.run(notifier.notify(_trained()))
        inbox.wait_for(1, timeout=10)

    assert len(reported) == 1
    alert, errors = reported[0]
    assert alert.event_id == event_id and errors and "slack-webhook" in errors[0]
    assert outbox.states_by_event([event_id]) == {event_id: "undeliverable"}
    assert outbox.counts().undeliverable == 1
    assert all("rejected" not in (m.header or "").lower() for m in inbox.messages)


def test_a_dispatcher_dying_before_its_commit_resends_once_and_never_after(
    inbox: SlackInbox, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicate window: the receiver answered 2xx but `mark_sent` never committed."""
    settings = _settings(settings)
    notifier = _notifier(inbox, settings)
    asyncio.run(notifier.notify(_trained()))

    class Died(BaseException):
        pass

    def die(*args: object) -> None:
        raise Died

    dying = Dispatcher(settings, notifier)
    monkeypatch.setattr(dying.outbox, "mark_sent", die)
    with pytest.raises(Died):
        while not dying.step():
            pass
    assert len(inbox.messages) == 1

    after = Dispatcher(settings, notifier)  # the restarted process
    wait_until(lambda: after.step() or len(inbox.messages) >= 2, 10, "the resend")
    assert len(inbox.messages) == 2  # at least once: the one duplicate of that window

    again = Dispatcher(settings, notifier)
    deadline = time.monotonic() + 1.5  # more than the send interval: a resend would be due
    while time.monotonic() < deadline:
        again.step()
    assert len(inbox.messages) == 2
    assert Outbox(settings.outbox_path).counts().sent == 1


def test_grouped_message_passes_block_kit_checks(settings: Settings) -> None:
    from taxiops.notify import block_kit_problems

    outbox = Outbox(settings.outbox_path)
    for number in range(30):
        outbox.enqueue(
            key=f"k{number}",
            kind="rejected",
            slack={"text": "x"},
            plain={"title": "x", "body": "y"},
            notice=_rejected(number),
        )
    members = outbox.alerts()
    slack, plain = grouped_message(members, settings)
    assert block_kit_problems(list(slack.blocks)) == []
    assert "30 more files rejected" in plain.title
    assert "and 25 more" in plain.body


def test_outbox_path_lives_under_home(settings: Settings) -> None:
    assert settings.outbox_path == settings.home / "alerts.db"
    assert isinstance(settings.outbox_path, Path)
