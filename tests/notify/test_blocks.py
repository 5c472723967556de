"""The TaxiopsNotifier block: end to end to the inbox, and loadable the way the server loads it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from prefect.blocks.abstract import NotificationError
from pydantic import SecretStr

from taxiops.errors import TaxiopsError
from taxiops.names import NOTIFIER_BLOCK_TYPE
from taxiops.notify import (
    NotifierError,
    SlackInbox,
    TaxiopsNotifier,
    notifier_from_settings,
)
from taxiops.settings import Settings
from tests.notify.notify_helpers import FLOW_RUN_ID, UI_URL, inbox_output, trained_notice

BOT_TOKEN = "xoxb-9-secret-bot-token"


def _notice_body() -> str:
    """A notice as the automation template renders it: JSON, no ui_url."""
    return trained_notice(ui_url=None).model_dump_json()


def _json_body(kind: str = "failed") -> str:
    return json.dumps(
        {
            "kind": kind,
            "state": "Failed",
            "message": "ValueError: boom",
            "flow_run_id": FLOW_RUN_ID,
            "flow_run_name": "nice-otter",
            "flow_name": "train-duration-model",
        }
    )


async def test_json_body_goes_out_as_block_kit_and_apprise(inbox: SlackInbox) -> None:
    notifier = TaxiopsNotifier(
        slack_webhook_url=SecretStr(inbox.url),
        apprise_urls=SecretStr(inbox.apprise_url),
        ui_url=UI_URL,
    )

    await notifier.notify(_json_body(), subject="ignored for notices")

    slack, apprise = sorted(inbox.wait_for(2), key=lambda m: m.endpoint, reverse=True)
    assert slack.endpoint == "webhook"
    assert slack.header == "\u274c train-duration-model failed"
    assert slack.button_urls == [f"{UI_URL}/runs/flow-run/{FLOW_RUN_ID}"]
    assert apprise.endpoint == "apprise"
    assert apprise.header == slack.header
    assert apprise.payload["type"] == "failure"
    assert f"Flow run: {UI_URL}/runs/flow-run/{FLOW_RUN_ID}" in (apprise.text or "")
    assert "train-duration-model failed" in inbox_output(inbox)


async def test_plain_body_goes_out_as_text(inbox: SlackInbox) -> None:
    notifier = TaxiopsNotifier(slack_webhook_url=SecretStr(inbox.url))

    await notifier.notify("Flow run nice-otter failed", subject="Prefect automated notification")

    [message] = inbox.wait_for(1)
    assert message.blocks == []
    assert message.text == "*Prefect automated notification*\nFlow run nice-otter failed"


async def test_bot_token_path(inbox: SlackInbox) -> None:
    notifier = TaxiopsNotifier(
        slack_bot_token=SecretStr(BOT_TOKEN),
        slack_channel="#taxiops",
        slack_api_url=inbox.api_url,
        ui_url=UI_URL,
    )

    await notifier.notify(_notice_body())

    [message] = inbox.wait_for(1)
    assert (message.endpoint, message.channel) == ("chat.postMessage", "#taxiops")
    assert message.header == "\U0001f3c6 New champion: green 2023-03"


async def test_a_failing_channel_does_not_stop_the_others(
    inbox: SlackInbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    inbox.respond_next(404)  # the webhook goes first and is revoked; no retry for a 404
    notifier = TaxiopsNotifier(
        slack_webhook_url=SecretStr(inbox.url), apprise_urls=SecretStr(inbox.apprise_url)
    )

    with pytest.raises(NotifierError) as caught:
        await notifier.notify(_json_body())

    [delivered] = inbox.wait_for(1)
    assert delivered.endpoint == "apprise"
    error = caught.value
    assert isinstance(error, NotificationError), "the server turns this into a failed action"
    assert isinstance(error, TaxiopsError)
    assert [f.channel for f in error.failures] == ["slack-webhook"]
    assert "slack-webhook: HTTP 404 'no_service'" in error.log
    assert str(error) == error.log
    assert "notification not delivered: slack-webhook: HTTP 404" in caplog.text
    for text in (str(error), repr(error), caplog.text):
        assert inbox.token not in text


async def test_rejected_blocks_fall_back_to_text(
    inbox: SlackInbox, caplog: pytest.LogCaptureFixture
) -> None:
    inbox.respond_next(400, "invalid_blocks")
    notifier = TaxiopsNotifier(slack_webhook_url=SecretStr(inbox.url), ui_url=UI_URL)

    await notifier.notify(_notice_body())

    [message] = inbox.wait_for(1)
    assert message.blocks == []
    assert (message.text or "").startswith("\U0001f3c6 New champion: green 2023-03")
    assert "sending the text without blocks" in caplog.text


async def test_no_channel_configured_warns(caplog: pytest.LogCaptureFixture) -> None:
    await TaxiopsNotifier().notify(_json_body())
    await TaxiopsNotifier(slack_webhook_url=SecretStr(" "), apprise_urls=SecretStr("")).notify("x")
    assert caplog.text.count("no channel configured") == 2


async def test_an_unexpected_error_in_one_channel_is_contained(
    inbox: SlackInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("json://secret-in-a-library-message")

    monkeypatch.setattr("taxiops.notify.blocks.send_apprise", broken)
    notifier = TaxiopsNotifier(
        slack_webhook_url=SecretStr(inbox.url), apprise_urls=SecretStr("json://x")
    )

    with pytest.raises(NotifierError, match="apprise: unexpected RuntimeError") as caught:
        await notifier.notify(_json_body())

    assert "secret-in-a-library-message" not in str(caught.value)
    assert inbox.wait_for(1)[0].endpoint == "webhook"


def test_compose_uses_the_block_ui_url_unless_the_notice_has_one() -> None:
    notifier = TaxiopsNotifier(ui_url="http://prefect.local:4200/")

    slack, _ = notifier.compose(_json_body())
    own, _ = notifier.compose(json.dumps({**json.loads(_json_body()), "ui_url": UI_URL}))

    assert slack.blocks[-1]["elements"][0]["url"].startswith("http://prefect.local:4200/runs/")
    assert own.blocks[-1]["elements"][0]["url"].startswith(f"{UI_URL}/runs/")


def test_notifier_from_settings_reads_secrets(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_CHANNEL", "#alerts")
    monkeypatch.setenv("TAXIOPS_APPRISE_URLS", "json://127.0.0.1:9/x")
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("TAXIOPS_SLACK_WEBHOOK_URL", raising=False)
    current = Settings()

    notifier = notifier_from_settings(current, UI_URL, slack_webhook_url="http://127.0.0.1:1/hook")

    assert notifier.slack_bot_token is not None
    assert notifier.slack_bot_token.get_secret_value() == BOT_TOKEN
    assert notifier.slack_channel == "#alerts"
    assert notifier.slack_webhook_url is not None
    assert notifier.slack_webhook_url.get_secret_value() == "http://127.0.0.1:1/hook"
    assert notifier.apprise_urls is not None
    assert notifier.ui_url == UI_URL
    assert BOT_TOKEN not in repr(notifier)
    assert notifier_from_settings(current, None).slack_webhook_url is None


async def test_server_loads_the_block_from_its_document_and_notifies(inbox: SlackInbox) -> None:
    """What the send-notification action does: block document -> class by slug -> notify."""
    from prefect.server.events.actions import _load_block_from_block_document
    from prefect.server.schemas.core import BlockDocument, BlockSchema, BlockType

    saved = TaxiopsNotifier(
        slack_webhook_url=SecretStr(inbox.url), slack_channel="#x", ui_url=UI_URL
    )
    type_id, schema_id = uuid.uuid4(), uuid.uuid4()
    schema = TaxiopsNotifier._to_block_schema(block_type_id=type_id)
    document = BlockDocument(
        id=uuid.uuid4(),
        name=None,
        is_anonymous=True,
        data=saved.model_dump(mode="json", context={"include_secrets": True}),
        block_schema_id=schema_id,
        block_schema=BlockSchema.model_validate(
            {
                **schema.model_dump(mode="json", exclude={"id"}),
                "id": str(schema_id),
                "block_type": BlockType(
                    id=type_id, name="taxiops notifier", slug=NOTIFIER_BLOCK_TYPE
                ).model_dump(mode="json"),
            }
        ),
        block_type_id=type_id,
    )

    block = await _load_block_from_block_document(document)

    assert type(block) is TaxiopsNotifier
    assert "notify" in block.get_block_capabilities()
    assert block.slack_webhook_url == saved.slack_webhook_url
    with block.raise_on_failure():
        await block.notify(_notice_body(), subject="s")
    assert inbox.wait_for(1)[0].button_urls == [f"{UI_URL}/runs/flow-run/{FLOW_RUN_ID}"]


@pytest.mark.timeout(60)
def test_a_fresh_prefect_process_finds_the_block_through_the_entry_point(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from prefect.blocks.core import Block
        assert "taxiops.notify.blocks" not in sys.modules
        cls = Block.get_block_class_from_key("taxiops-notifier")
        print(cls.__module__, cls.__name__, sorted(cls.get_block_capabilities()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["taxiops.notify.blocks", "TaxiopsNotifier", "['notify']"]
