"""Sending to the local inbox over real HTTP: retries, failures, and secrets kept out."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import SecretStr

from taxiops.app.server import free_port
from taxiops.errors import TaxiopsError
from taxiops.notify import (
    NotificationDeliveryError,
    RetryPolicy,
    SlackInbox,
    SlackMessage,
    render_slack,
    send_apprise,
    send_slack_message,
    send_slack_webhook,
)
from taxiops.notify.channels import retry_after_seconds
from tests.notify.notify_helpers import trained_notice

BOT_TOKEN = "xoxb-1234-secret-bot-token"


def _assert_secret_absent(
    secret: str, exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    for text in (str(exc), repr(exc), repr(exc.args), caplog.text):
        assert secret not in text
    for record in caplog.records:
        assert secret not in record.getMessage()


def test_webhook_delivers_block_kit(inbox: SlackInbox, fast_retry: RetryPolicy) -> None:
    message = render_slack(trained_notice())

    send_slack_webhook(SecretStr(inbox.url), message, retry=fast_retry)

    [received] = inbox.wait_for(1)
    assert received.payload == message.to_payload()
    assert inbox.request_count == 1


def test_webhook_retries_a_server_error_and_delivers_once(
    inbox: SlackInbox, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox.respond_next(500)
    inbox.respond_next(502)

    send_slack_webhook(SecretStr(inbox.url), {"text": "after two failures"}, retry=fast_retry)

    assert [m.text for m in inbox.messages] == ["after two failures"]
    assert inbox.request_count == 3
    assert "Slack answered HTTP 500; retry 1 of 3" in caplog.text
    assert "Slack answered HTTP 502; retry 2 of 3" in caplog.text
    assert inbox.token not in caplog.text


def test_webhook_honours_retry_after(inbox: SlackInbox, fast_retry: RetryPolicy) -> None:
    inbox.respond_next(429, retry_after=1)
    started = time.monotonic()

    send_slack_webhook(SecretStr(inbox.url), {"text": "patience"}, retry=fast_retry)

    assert time.monotonic() - started >= 1.0
    assert [m.text for m in inbox.messages] == ["patience"]
    assert inbox.request_count == 2


def test_webhook_fails_fast_when_retry_after_is_too_long(
    inbox: SlackInbox, fast_retry: RetryPolicy
) -> None:
    inbox.respond_next(429, retry_after=3600)
    started = time.monotonic()

    with pytest.raises(NotificationDeliveryError) as caught:
        send_slack_webhook(SecretStr(inbox.url), {"text": "x"}, retry=fast_retry)

    assert time.monotonic() - started < 1.0
    assert caught.value.status == 429
    assert inbox.request_count == 1


def test_final_failure_raises_without_the_url(
    inbox: SlackInbox, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox.respond_next(500, times=10)

    with pytest.raises(NotificationDeliveryError) as caught:
        send_slack_webhook(SecretStr(inbox.url), {"text": "never"}, retry=fast_retry)

    error = caught.value
    assert isinstance(error, TaxiopsError)
    assert (error.channel, error.status, error.retries) == ("slack-webhook", 500, 3)
    assert "gave up after 3 retries" in str(error)
    assert inbox.request_count == 4, "one try and three bounded retries"
    assert error.__cause__ is None and error.__context__ is None
    _assert_secret_absent(inbox.url, error, caplog)
    _assert_secret_absent(inbox.token, error, caplog)
    assert inbox.messages == []


def test_rejected_message_is_not_retried(inbox: SlackInbox, fast_retry: RetryPolicy) -> None:
    bad = SlackMessage(text="x", blocks=({"type": "video"},))

    with pytest.raises(NotificationDeliveryError, match="HTTP 400 'invalid_blocks'"):
        send_slack_webhook(SecretStr(inbox.url), bad, retry=fast_retry)

    assert inbox.request_count == 1


def test_revoked_webhook_names_what_to_check(inbox: SlackInbox, fast_retry: RetryPolicy) -> None:
    inbox.respond_next(404)

    with pytest.raises(NotificationDeliveryError, match="check the webhook URL or token"):
        send_slack_webhook(SecretStr(inbox.url), {"text": "x"}, retry=fast_retry)


def test_unreachable_webhook_retries_then_raises_without_the_url(
    fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_path = "/services/T1/B2/closed-port-secret-token"
    url = f"http://127.0.0.1:{free_port()}{secret_path}"

    with pytest.raises(NotificationDeliveryError) as caught:
        send_slack_webhook(SecretStr(url), {"text": "x"}, retry=fast_retry)

    assert caught.value.retries == 3
    assert "could not reach Slack after 3 retries: URLError" in str(caught.value)
    assert "connection failed (URLError); retry 3 of 3" in caplog.text
    _assert_secret_absent("closed-port-secret-token", caught.value, caplog)


def test_bad_webhook_url_is_not_echoed(
    fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NotificationDeliveryError) as caught:
        send_slack_webhook(
            SecretStr("ftp://hooks.example/very-secret"), {"text": "x"}, retry=fast_retry
        )

    _assert_secret_absent("very-secret", caught.value, caplog)


def test_bot_token_posts_through_chat_post_message(
    inbox: SlackInbox, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox.respond_next(503)
    message = render_slack(trained_notice())

    send_slack_message(
        SecretStr(BOT_TOKEN), "#taxiops", message, base_url=inbox.api_url, retry=fast_retry
    )

    [received] = inbox.wait_for(1)
    assert received.channel == "#taxiops"
    assert received.blocks == list(message.blocks)
    assert inbox.request_count == 2
    assert BOT_TOKEN not in caplog.text


def test_bot_token_api_error_raises_without_the_token(
    inbox: SlackInbox, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = SlackMessage(text="x", blocks=({"type": "video"},))

    with pytest.raises(NotificationDeliveryError, match="invalid_blocks") as caught:
        send_slack_message(
            SecretStr(BOT_TOKEN), "#c", bad, base_url=inbox.api_url, retry=fast_retry
        )
    with pytest.raises(NotificationDeliveryError, match="no channel set"):
        send_slack_message(SecretStr(BOT_TOKEN), "", bad, base_url=inbox.api_url)

    assert caught.value.channel == "slack-api"
    _assert_secret_absent(BOT_TOKEN, caught.value, caplog)


def test_apprise_posts_title_and_body(inbox: SlackInbox, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{inbox.apprise_url}/apprise-secret-path"

    send_apprise(SecretStr(url), "Model trained", "green 2023-03\nRMSE 5.42", level="success")

    [received] = inbox.wait_for(1)
    assert received.endpoint == "apprise"
    assert received.header == "Model trained"
    assert received.text == "green 2023-03\nRMSE 5.42"
    assert received.payload["type"] == "success"
    assert "apprise-secret-path" not in caplog.text


def test_apprise_sends_to_every_url(inbox: SlackInbox) -> None:
    urls = f"{inbox.apprise_url}/one, {inbox.apprise_url}/two"

    send_apprise(SecretStr(urls), "t", "b")

    assert len(inbox.wait_for(2)) == 2


def test_apprise_failure_raises_without_the_url(
    inbox: SlackInbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox.respond_next(500)
    url = f"{inbox.apprise_url}/apprise-secret-path"

    with pytest.raises(NotificationDeliveryError, match="1 of 1 services failed") as caught:
        send_apprise(SecretStr(url), "t", "b", level="failure")

    assert caught.value.channel == "apprise"
    _assert_secret_absent("apprise-secret-path", caught.value, caplog)


@pytest.mark.parametrize("urls", ["nonsense://secret-apprise-thing", " , "])
def test_apprise_bad_urls_are_named_by_position(
    urls: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(NotificationDeliveryError) as caught:
        send_apprise(SecretStr(urls), "t", "b")

    assert "URL #1 of 1 (scheme 'nonsense')" in str(caught.value) or "no URLs" in str(caught.value)
    _assert_secret_absent("secret-apprise-thing", caught.value, caplog)


def test_retry_after_parsing() -> None:
    in_two_minutes = format_datetime(datetime.now(UTC) + timedelta(minutes=2), usegmt=True)

    assert retry_after_seconds({"Retry-After": ["3"]}) == 3.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({}) == 1.0
    assert retry_after_seconds({"Retry-After": "soon"}) == 1.0
    assert 100 < retry_after_seconds({"Retry-After": in_two_minutes}) <= 120


def test_delivery_error_survives_pickling() -> None:
    import pickle

    error = NotificationDeliveryError("slack-webhook", "HTTP 500", status=500, retries=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.channel, copy.detail, copy.status, copy.retries, str(copy)) == (
        "slack-webhook",
        "HTTP 500",
        500,
        3,
        "slack-webhook: HTTP 500",
    )
