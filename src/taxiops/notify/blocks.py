"""`TaxiopsNotifier`: the Prefect notification block the automations send through.

Prefect's `send-notification` action renders the automation's body template and
awaits `block.notify(body=..., subject=...)` inside the server. Prefect's own
Slack blocks deliver that as plain text; this block reads the body as a JSON
`Notice` and delivers Block Kit to Slack and a title + body to apprise.

With `outbox_path` set (as `taxiops up` saves it), `notify` only queues the rendered
alert in that outbox (`taxiops.notify.outbox`); the dispatcher delivers it.

The server finds this class by its slug through the `prefect.collections` entry
point in pyproject.toml (`taxiops = "taxiops.notify.blocks"`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.blocks.abstract import NotificationBlock, NotificationError
from pydantic import Field, SecretStr

from taxiops.errors import InvalidNoticeError, NotificationDeliveryError, TaxiopsError
from taxiops.names import NOTIFIER_BLOCK_NAME, NOTIFIER_BLOCK_TYPE
from taxiops.notify.channels import (
    APPRISE,
    DEFAULT_RETRY,
    SLACK_API,
    SLACK_WEBHOOK,
    RetryPolicy,
    send_apprise,
    send_slack_message,
    send_slack_webhook,
)
from taxiops.notify.messages import Notice
from taxiops.notify.render import (
    PlainMessage,
    SlackMessage,
    render_plain,
    render_plain_slack,
    render_slack,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    from taxiops.settings import Settings

    _Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]


_LOG = logging.getLogger("taxiops.notify")
_NO_PLAIN = PlainMessage("", "")


class NotifierError(NotificationError, TaxiopsError):
    """One or more channels did not take a notification; the others were still tried.

    A Prefect `NotificationError`, so the server's send-notification action
    records a failed action with this text as its log, instead of redelivering
    the message (and re-sending to the channels that worked).
    """

    def __init__(self, failures: Sequence[NotificationDeliveryError]) -> None:
        self.failures = tuple(failures)
        log = "; ".join(str(failure) for failure in self.failures)
        NotificationError.__init__(self, log)
        Exception.__init__(self, log)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.failures,))


class TaxiopsNotifier(NotificationBlock):
    """Sends taxiops notices as Slack Block Kit (webhook or bot token) and through apprise."""

    _block_type_name = "taxiops notifier"
    _block_type_slug = NOTIFIER_BLOCK_TYPE
    _description = (
        "Sends taxiops notices (model trained, run failed, file rejected, month missing) "
        "as Slack Block Kit messages and apprise notifications."
    )

    slack_webhook_url: SecretStr | None = Field(
        default=None,
        title="Slack webhook URL",
        description="Slack incoming webhook; the local taxiops inbox URL works too.",
    )
    slack_bot_token: SecretStr | None = Field(
        default=None,
        title="Slack bot token",
        description="Bot token for chat.postMessage; needs slack_channel.",
    )
    slack_channel: str | None = Field(
        default=None, description="Channel the bot token posts to, e.g. #taxiops."
    )
    slack_api_url: str | None = Field(
        default=None,
        title="Slack API base URL",
        description="Where chat.postMessage goes; empty means https://slack.com/api/.",
    )
    apprise_urls: SecretStr | None = Field(
        default=None, title="apprise URLs", description="Comma-separated apprise URLs."
    )
    ui_url: str | None = Field(
        default=None,
        title="Prefect UI URL",
        description="Base of the flow-run links in messages, e.g. http://127.0.0.1:4200.",
    )

    outbox_path: str | None = Field(
        default=None,
        title="Alert outbox",
        description="SQLite file alerts are queued in until delivered (TAXIOPS_HOME/alerts.db "
        "of the machine running `taxiops up` or `taxiops dispatch`); empty sends at once.",
    )

    async def notify(self, body: str, subject: str | None = None) -> None:
        """Queue `body` in the alert outbox, from where the dispatcher delivers it.

        A JSON notice (see `taxiops.notify.templates`) becomes Block Kit; any other
        body is sent as text under `subject`. Queueing is idempotent: a notice of an
        event already queued (a re-fired action) is not queued again. Channel trouble
        never raises here. Without an outbox, or when it cannot be written, the
        channels are tried at once as `send_now` does.
        """
        slack, plain = self.compose(body, subject)
        logger = self.logger
        if self.outbox_path:
            try:
                queued = await asyncio.to_thread(self._enqueue, body, subject, slack, plain)
            except (OSError, sqlite3.Error) as exc:
                logger.error(
                    "cannot queue the notification in %s (%s); sending it at once",
                    self.outbox_path,
                    exc,
                )
            else:
                logger.info("notification %s", "queued" if queued else "was already queued")
                return
        await self.send_now(slack, plain)

    def _enqueue(
        self, body: str, subject: str | None, slack: SlackMessage, plain: PlainMessage
    ) -> bool:
        from taxiops.notify.outbox import Outbox

        try:
            notice: Notice | None = Notice.from_json(body)
        except InvalidNoticeError:
            notice = None
        if notice is not None and notice.event_id:
            key = f"event:{notice.event_id}:{notice.kind.value}"
        else:
            # No event (a proactive trigger): the same text within 5 minutes is one alert.
            digest = hashlib.sha256(f"{subject}\n{body}".encode()).hexdigest()[:32]
            key = f"body:{digest}:{int(time.time() // 300)}"
        return Outbox(Path(self.outbox_path or "")).enqueue(
            key=key,
            kind=notice.kind.value if notice is not None else "text",
            event_id=notice.event_id if notice is not None else None,
            notice=None if notice is None else notice.with_ui_url(self.ui_url).model_dump_json(),
            slack=slack.to_payload(),
            plain={"title": plain.title, "body": plain.body, "level": plain.level},
        )

    async def send_now(self, slack: SlackMessage, plain: PlainMessage) -> None:
        """Send to every configured channel now; raise `NotifierError` after trying every
        channel if any failed. Failures are logged without secrets."""
        logger = self.logger
        sends = self._sends(slack, plain, logger)
        if not sends:
            logger.warning("taxiops notifier has no channel configured; nothing was sent")
            return
        failures: list[NotificationDeliveryError] = []
        for channel, send in sends:
            try:
                await asyncio.to_thread(send)
            except Exception as exc:  # one channel's failure must not silence the others
                failure = (
                    exc
                    if isinstance(exc, NotificationDeliveryError)
                    else NotificationDeliveryError(channel, f"unexpected {type(exc).__name__}")
                )
                logger.error("notification not delivered: %s", failure)
                failures.append(failure)
        if failures:
            raise NotifierError(failures)

    def channels(self) -> list[str]:
        """The channels this notifier sends to."""
        return [channel for channel, _ in self._sends(SlackMessage(text=""), _NO_PLAIN, _LOG)]

    def sender(
        self, channel: str, slack: SlackMessage, plain: PlainMessage, retry: RetryPolicy
    ) -> Callable[[], None] | None:
        """A call that sends `slack` / `plain` on `channel` once (with `retry`'s quick
        retries); None when this notifier has no such channel."""
        for name, send in self._sends(slack, plain, _LOG, retry):
            if name == channel:
                return send
        return None

    def compose(self, body: str, subject: str | None = None) -> tuple[SlackMessage, PlainMessage]:
        """The Slack and apprise messages `notify` would send for `body`."""
        try:
            notice = Notice.from_json(body).with_ui_url(self.ui_url)
        except InvalidNoticeError:
            return render_plain_slack(body, subject), PlainMessage(subject or "taxiops", body)
        return render_slack(notice), render_plain(notice)

    def _sends(
        self,
        slack: SlackMessage,
        plain: PlainMessage,
        logger: _Logger,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> list[tuple[str, Callable[[], None]]]:
        sends: list[tuple[str, Callable[[], None]]] = []
        if url := _given(self.slack_webhook_url):
            webhook = _webhook_sender(url, retry)
            sends.append((SLACK_WEBHOOK, lambda: _with_text_fallback(slack, logger, webhook)))
        if token := _given(self.slack_bot_token):
            bot = _bot_sender(token, self.slack_channel or "", self.slack_api_url, retry)
            sends.append((SLACK_API, lambda: _with_text_fallback(slack, logger, bot)))
        if urls := _given(self.apprise_urls):
            sends.append(
                (APPRISE, lambda: send_apprise(urls, plain.title, plain.body, level=plain.level))
            )
        return sends


def _given(secret: SecretStr | None) -> SecretStr | None:
    # An empty environment variable means "not configured", not "send to nowhere".
    return secret if secret is not None and secret.get_secret_value().strip() else None


def _webhook_sender(
    url: SecretStr, retry: RetryPolicy = DEFAULT_RETRY
) -> Callable[[SlackMessage], None]:
    return lambda message: send_slack_webhook(url, message, retry=retry)


def _bot_sender(
    token: SecretStr, channel: str, base_url: str | None, retry: RetryPolicy = DEFAULT_RETRY
) -> Callable[[SlackMessage], None]:
    return lambda message: send_slack_message(
        token, channel, message, base_url=base_url, retry=retry
    )


def _with_text_fallback(
    message: SlackMessage,
    logger: _Logger,
    send: Callable[[SlackMessage], None],
) -> None:
    # People should hear about it even if Slack dislikes a block: resend the text alone.
    try:
        send(message)
    except NotificationDeliveryError as exc:
        if not (message.blocks and "invalid_blocks" in exc.detail):
            raise
        logger.warning("%s; sending the text without blocks", exc)
        send(SlackMessage(text=message.text))


def notifier_from_settings(
    settings: Settings,
    ui_url: str | None,
    *,
    slack_webhook_url: SecretStr | str | None = None,
    slack_api_url: str | None = None,
) -> TaxiopsNotifier:
    """A notifier holding the secrets from `settings`.

    `slack_webhook_url` overrides the setting (the demo passes the local inbox URL).
    """
    webhook = slack_webhook_url if slack_webhook_url is not None else settings.slack_webhook_url
    if isinstance(webhook, str):
        webhook = SecretStr(webhook)
    return TaxiopsNotifier(
        slack_webhook_url=webhook,
        slack_bot_token=settings.slack_bot_token,
        slack_channel=settings.slack_channel,
        slack_api_url=slack_api_url,
        apprise_urls=settings.apprise_urls,
        ui_url=ui_url,
        outbox_path=str(settings.outbox_path.resolve()),
    )


async def save_notifier(
    settings: Settings,
    ui_url: str | None,
    name: str = NOTIFIER_BLOCK_NAME,
    *,
    slack_webhook_url: SecretStr | str | None = None,
    slack_api_url: str | None = None,
) -> UUID:
    """Save (or overwrite) the notifier block document `name`; returns its id.

    Registers the block type first, so it works on a fresh server. Needs the
    Prefect API (`PREFECT_API_URL`).
    """
    notifier = notifier_from_settings(
        settings, ui_url, slack_webhook_url=slack_webhook_url, slack_api_url=slack_api_url
    )
    return await notifier.asave(name, overwrite=True)
