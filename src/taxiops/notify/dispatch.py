"""The dispatcher: drains the alert outbox (`taxiops.notify.outbox`) to the channels.

`taxiops up` runs it on a thread (`dispatching`); on a Prefect server machine without
`taxiops up` (team mode) `taxiops dispatch` runs it alone. Each pass:

1. routes new alerts: single, or held in a storm group (`TAXIOPS_ALERT_STORM_*`);
2. gives each group whose window ended one grouped message (how many, which rules, a
   few file names, where to see them all);
3. gives up on alerts older than `TAXIOPS_ALERT_MAX_AGE_SECONDS` and reports each once
   as a `taxiops.alert.undeliverable` event (retried until Prefect takes it);
4. sends at most one due delivery per channel whose pacer allows it: posts to a channel
   are at least `TAXIOPS_ALERT_SEND_INTERVAL_SECONDS` apart, counted from the end of the
   previous post, so a receiver never sees two within that interval. Alerts of a kind not
   in a storm go first, so a trained month or a failure never waits behind a storm.

A failed send (connection refused, 5xx, 429, any 4xx) is retried after 1 s, doubling up to
`TAXIOPS_ALERT_RETRY_MAX_SECONDS` (+ up to 25% jitter); within one attempt the send
waits what a 429's `Retry-After` says (slack-sdk's handler, up to 60 s) and posts again.
The outbox records "sent" only when the send returned, i.e. the receiver answered 2xx.

Channels and their secrets come from settings, as the notifier block `taxiops up` saves
does; the dispatcher needs no Prefect API to deliver, only to report undeliverable alerts.
Channels are served one after another on one thread: a channel that hangs until its
timeout (10 s) delays the others by that much.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taxiops import names
from taxiops.errors import InvalidNoticeError, NotificationDeliveryError
from taxiops.notify.channels import RetryPolicy
from taxiops.notify.messages import (
    DataRejected,
    Notice,
    NoticeKind,
)
from taxiops.notify.outbox import Alert, Delivery, Outbox
from taxiops.notify.render import PlainMessage, SlackMessage

if TYPE_CHECKING:
    from taxiops.notify.blocks import TaxiopsNotifier
    from taxiops.settings import Settings

logger = logging.getLogger("taxiops.notify.dispatch")

_POLL_SECONDS = 0.2
_FIRST_RETRY_SECONDS = 1.0
_REPORT_EVERY_SECONDS = 10.0  # how often an undeliverable report Prefect refused is retried
_FILES_SHOWN = 5
# One attempt: two quick retries, and what a 429's Retry-After asks, up to a minute.
SEND_RETRY = RetryPolicy(
    max_retries=2, backoff_seconds=0.25, max_retry_after_seconds=60, timeout_seconds=10
)

ReportUndeliverable = Callable[[Alert, list[str]], None]


class Dispatcher:
    """Delivers what `outbox` holds through `notifier`'s channels, one pass per `step`."""

    def __init__(
        self,
        settings: Settings,
        notifier: TaxiopsNotifier,
        outbox: Outbox | None = None,
        *,
        report: ReportUndeliverable | None = None,
        retry: RetryPolicy = SEND_RETRY,
    ) -> None:
        self.settings = settings
        self.notifier = notifier
        self.outbox = outbox or Outbox(settings.outbox_path)
        self.channels = notifier.channels()
        self._report = report or post_undeliverable_event
        self._retry = retry
        self._next_post: dict[str, float] = {}  # monotonic time a channel may be posted to
        self._next_report = 0.0

    def step(self) -> bool:
        """One pass; True when something was sent or tried (more may be due at once)."""
        settings = self.settings
        now = time.time()
        if not self.channels:
            return False  # alerts wait (and expire) until a channel is configured
        self.outbox.route_new(
            self.channels,
            storm_count=settings.alert_storm_count,
            window_seconds=settings.alert_storm_window_seconds,
            now=now,
        )
        for group_id, members in self.outbox.due_groups(now):
            slack, plain = grouped_message(members, settings)
            self.outbox.close_group(
                group_id,
                slack=slack.to_payload(),
                plain=_plain_dict(plain),
                channels=self.channels,
                now=now,
            )
            logger.info(
                "storm: %d %s alerts grouped into one message", len(members), members[0].kind
            )
        if self.outbox.expire(max_age_seconds=settings.alert_max_age_seconds, now=now):
            self._next_report = 0.0
        self._report_undeliverable()
        busy = False
        for channel in self.channels:
            if time.monotonic() < self._next_post.get(channel, 0.0):
                continue
            delivery = self.outbox.next_delivery(channel, time.time())
            if delivery is not None:
                self._deliver(delivery)
                busy = True
        return busy

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until `stop` is set; a pass that fails (the outbox locked or
        unreadable) is logged and tried again a second later."""
        logger.info(
            "delivering alerts from %s to %s",
            self.outbox.path,
            ", ".join(self.channels) or "no channel (alerts wait until one is configured)",
        )
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:
                logger.exception("alert dispatch pass failed; trying again")
                stop.wait(1.0)
                continue
            if not busy:
                stop.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        soonest = min(self._next_post.values(), default=0.0) - time.monotonic()
        return min(_POLL_SECONDS, max(soonest, 0.01)) if soonest > 0 else _POLL_SECONDS

    def _deliver(self, delivery: Delivery) -> None:
        alert, channel = delivery.alert, delivery.channel
        slack = SlackMessage(
            text=str(alert.slack.get("text") or ""),
            blocks=tuple(alert.slack.get("blocks") or ()),
        )
        plain = PlainMessage(
            str(alert.plain.get("title") or "taxiops"),
            str(alert.plain.get("body") or ""),
            alert.plain.get("level", "info"),
        )
        send = self.notifier.sender(channel, slack, plain, self._retry)
        try:
            if send is None:
                raise NotificationDeliveryError(channel, "not configured on this machine")
            send()
        except Exception as exc:
            attempts = delivery.attempts + 1
            delay = min(
                self.settings.alert_retry_max_seconds, _FIRST_RETRY_SECONDS * 2 ** (attempts - 1)
            ) * (1 + random.uniform(0, 0.25))
            error = str(exc) if isinstance(exc, NotificationDeliveryError) else type(exc).__name__
            self.outbox.mark_failed(alert.id, channel, error=error, retry_at=time.time() + delay)
            logger.warning(
                "alert %s not delivered on %s (attempt %d), next try in %.1f s: %s",
                alert.kind,
                channel,
                attempts,
                delay,
                error,
            )
        else:
            self.outbox.mark_sent(alert.id, channel, time.time())
            logger.info("alert sent on %s: %s", channel, alert.plain.get("title") or alert.kind)
        finally:
            interval = self.settings.alert_send_interval_seconds
            self._next_post[channel] = time.monotonic() + interval

    def _report_undeliverable(self) -> None:
        if time.monotonic() < self._next_report:
            return
        for alert, errors in self.outbox.unreported():
            logger.error(
                "alert undeliverable after %.0f s: %s (%s)",
                time.time() - alert.created_at,
                alert.plain.get("title") or alert.kind,
                "; ".join(errors),
            )
            try:
                self._report(alert, errors)
            except Exception as exc:
                logger.warning("cannot report the undeliverable alert to Prefect yet: %s", exc)
                self._next_report = time.monotonic() + _REPORT_EVERY_SECONDS
                return
            self.outbox.mark_reported(alert.id, time.time())


def post_undeliverable_event(alert: Alert, errors: list[str]) -> None:
    """Emit `taxiops.alert.undeliverable` to the Prefect API; raise if it did not take it.
    The event id follows from the alert, so a report sent twice is stored once."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    event = Event.model_validate(
        {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"taxiops-alert:{alert.id}"),
            "event": names.ALERT_UNDELIVERABLE,
            "resource": names.alert_resource(alert.id, alert.kind),
            "payload": {
                "kind": alert.kind,
                "title": alert.plain.get("title"),
                "raised_at": alert.created_at,
                "triggering_event_id": alert.event_id,
                "errors": errors,
            },
        }
    )
    with get_client(sync_client=True) as client:
        client.request("POST", "/events", json=[event.model_dump(mode="json")])


# --- the grouped message of a storm -------------------------------------------------


def grouped_message(members: list[Alert], settings: Settings) -> tuple[SlackMessage, PlainMessage]:
    """One message telling a storm's held alerts: how many, which rules, a few file names,
    and where to see them all."""
    from slack_sdk.models.blocks import ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock

    kind = members[0].kind
    notices = [_notice(member) for member in members]
    rejected = [n.facts for n in notices if n is not None and isinstance(n.facts, DataRejected)]
    window = f"{settings.alert_storm_window_seconds:g} s"
    count = len(members)
    if kind == NoticeKind.REJECTED.value:
        title = f"\u26a0\ufe0f {count} more files rejected"
        rules = Counter(facts.rule or "unknown rule" for facts in rejected)
        names_seen = [Path(facts.path).name for facts in rejected if facts.path]
        lines = [
            f"{count} more rejections came within {window} of each other; they are told here "
            "in one message instead of one each.",
            "Rules: " + ", ".join(f"*{rule}* \u00d7{n}" for rule, n in rules.most_common()),
        ]
    else:
        title = f"\U0001f514 {count} more {kind.replace('_', ' ')} alerts"
        names_seen = [str(member.plain.get("title") or kind) for member in members]
        lines = [f"{count} more {kind.replace('_', ' ')} alerts came within {window}."]
    shown = ", ".join(f"`{name}`" for name in names_seen[:_FILES_SHOWN])
    if len(names_seen) > _FILES_SHOWN:
        shown += f" and {len(names_seen) - _FILES_SHOWN} more"
    if shown:
        lines.append(("Files: " if rejected else "Among them: ") + shown)
    ui_url = next((n.ui_url for n in notices if n is not None and n.ui_url), None)
    where = ["`taxiops status`"]
    if rejected:
        where.append(f"the quarantine folder `{settings.quarantine_dir}`")
    if ui_url:
        where.append(f"<{ui_url}/events|the Prefect UI events page>")
    see = "See them all: " + " \u00b7 ".join(where)
    blocks = [
        HeaderBlock(text=title[:150]),
        SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:3000])),
        ContextBlock(elements=[MarkdownTextObject(text=see[:3000])]),
    ]
    text = f"{title} \u2014 {lines[0]} {see}"[:3000]
    plain_body = "\n".join([*lines, see]).replace("*", "").replace("`", "")
    return (
        SlackMessage(text=text, blocks=tuple(block.to_dict() for block in blocks)),
        PlainMessage(title, plain_body, "warning"),
    )


def _notice(alert: Alert) -> Notice | None:
    if not alert.notice:
        return None
    try:
        return Notice.from_json(alert.notice)
    except InvalidNoticeError:
        return None


def _plain_dict(plain: PlainMessage) -> dict[str, Any]:
    return {"title": plain.title, "body": plain.body, "level": plain.level}


# --- running it ----------------------------------------------------------------------


def run_dispatcher(
    settings: Settings, stop: threading.Event, *, slack_webhook_url: str | None = None
) -> None:
    """Deliver alerts until `stop` is set; channels from settings (`slack_webhook_url`
    overrides the webhook, as the demo's local inbox does)."""
    from taxiops.notify.blocks import notifier_from_settings

    notifier = notifier_from_settings(settings, None, slack_webhook_url=slack_webhook_url)
    Dispatcher(settings, notifier).run(stop)


@contextmanager
def dispatching(settings: Settings, *, slack_webhook_url: str | None = None) -> Iterator[None]:
    """Run the dispatcher on a thread for the duration of the block."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_dispatcher,
        args=(settings, stop),
        kwargs={"slack_webhook_url": slack_webhook_url},
        name="taxiops-alerts",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


def dispatch_until_signalled(settings: Settings) -> None:
    """`taxiops dispatch`: deliver alerts until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    run_dispatcher(settings, stop)


# --- reading back, for `taxiops status` -------------------------------------------------


def alert_states(settings: Settings, event_ids: list[str]) -> dict[str, str]:
    """The delivery state of the alert each event id raised, when this machine's outbox
    holds it (in team mode the outbox is on the Prefect server's machine)."""
    if not settings.outbox_path.is_file():
        return {}
    return Outbox(settings.outbox_path).states_by_event(event_ids)


def print_alert_summary(settings: Settings) -> None:
    """`taxiops status`'s alert lines: counts by state and every undeliverable alert."""
    if not settings.outbox_path.is_file():
        return
    outbox = Outbox(settings.outbox_path)
    counts = outbox.counts()
    print(
        f"\nalerts: {counts.sent} sent, "
        f"{counts.pending} pending, {counts.undeliverable} undeliverable "
        f"({counts.grouped} held for grouped storm messages)"
    )
    for alert in outbox.undeliverable():
        raised = time.strftime("%Y-%m-%d %H:%M", time.localtime(alert.created_at))
        print(f"undeliverable {raised} {alert.kind:<10} {alert.plain.get('title') or ''}")
