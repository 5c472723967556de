"""Telling people: message rendering, Slack and apprise channels, the Prefect notifier
block, the automations' body templates, and a local Slack inbox for demos and tests.

    messages   Notice (what happened): kinds, facts, reading it from a template's JSON
    render     Notice -> Block Kit for Slack, title + body for apprise
    channels   send_slack_webhook, send_slack_message, send_apprise
    blocks     TaxiopsNotifier, the block the automations' send-notification uses
    templates  Jinja bodies rendering a Notice as JSON inside the Prefect server
    inbox      SlackInbox: a Slack-compatible webhook server on 127.0.0.1

`blocks` imports Prefect, so its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taxiops.errors import InvalidNoticeError, NotificationDeliveryError
from taxiops.notify.channels import (
    RetryPolicy,
    send_apprise,
    send_slack_message,
    send_slack_webhook,
)
from taxiops.notify.inbox import InboxMessage, SlackInbox, block_kit_problems, serve_inbox
from taxiops.notify.messages import (
    DataRejected,
    ModelTrained,
    MonthMissing,
    Notice,
    NoticeKind,
    RunFailure,
)
from taxiops.notify.render import (
    PlainMessage,
    SlackMessage,
    render_plain,
    render_plain_slack,
    render_slack,
)
from taxiops.notify.templates import (
    FAILURE_BODY_TEMPLATE,
    MISSING_MONTH_BODY_TEMPLATE,
    REJECTED_BODY_TEMPLATE,
    SUBJECT_TEMPLATE,
    TRAINED_BODY_TEMPLATE,
)

if TYPE_CHECKING:
    from taxiops.notify.blocks import (
        NotifierError,
        TaxiopsNotifier,
        notifier_from_settings,
        save_notifier,
    )

_FROM_BLOCKS = frozenset(
    {
        "NotifierError",
        "TaxiopsNotifier",
        "notifier_from_settings",
        "save_notifier",
    }
)


def __getattr__(name: str) -> Any:
    if name in _FROM_BLOCKS:
        return getattr(importlib.import_module("taxiops.notify.blocks"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAILURE_BODY_TEMPLATE",
    "MISSING_MONTH_BODY_TEMPLATE",
    "REJECTED_BODY_TEMPLATE",
    "SUBJECT_TEMPLATE",
    "TRAINED_BODY_TEMPLATE",
    "DataRejected",
    "InboxMessage",
    "InvalidNoticeError",
    "ModelTrained",
    "MonthMissing",
    "NotificationDeliveryError",
    "NotifierError",
    "Notice",
    "NoticeKind",
    "PlainMessage",
    "RetryPolicy",
    "RunFailure",
    "SlackInbox",
    "SlackMessage",
    "TaxiopsNotifier",
    "block_kit_problems",
    "notifier_from_settings",
    "render_plain",
    "render_plain_slack",
    "render_slack",
    "save_notifier",
    "send_apprise",
    "send_slack_message",
    "send_slack_webhook",
    "serve_inbox",
]
