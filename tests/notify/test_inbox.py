"""The local Slack inbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from taxiops.notify import SlackInbox, block_kit_problems, render_slack
from tests.notify.notify_helpers import (
    FLOW_RUN_ID,
    UI_URL,
    inbox_output,
    post,
    post_json,
    trained_notice,
)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def test_good_block_kit_message_is_stored_logged_and_printed(inbox: SlackInbox) -> None:
    payload = render_slack(trained_notice()).to_payload()

    answer = post_json(inbox.url, payload)

    assert (answer.status, answer.body) == (200, "ok")
    [message] = inbox.wait_for(1)
    assert message.endpoint == "webhook"
    assert message.payload == payload
    assert message.header == "\U0001f3c6 New champion: green 2023-03"
    assert message.fields["File"] == "green_tripdata_2023-03.parquet"
    assert message.button_urls == [f"{UI_URL}/runs/flow-run/{FLOW_RUN_ID}"]

    printed = inbox_output(inbox)
    assert "New champion: green 2023-03" in printed
    assert "  File: green_tripdata_2023-03.parquet" in printed
    assert "  Rows read / kept: 55,000 / 54,321" in printed
    assert f"[Open flow run in Prefect] {UI_URL}/runs/flow-run/{FLOW_RUN_ID}" in printed
    assert "*" not in printed and "`" not in printed, "mrkdwn markup should be stripped"
    assert inbox.token not in printed

    assert inbox.log_path is not None
    [line] = inbox.log_path.read_text().splitlines()
    logged = json.loads(line)
    assert logged["endpoint"] == "webhook"
    assert logged["payload"] == payload


def test_text_only_message_is_accepted(inbox: SlackInbox) -> None:
    answer = post_json(inbox.url, {"text": "a & b <c>"})

    assert (answer.status, answer.body) == (200, "ok")
    assert inbox.wait_for(1)[0].text == "a & b <c>"
    assert "a & b <c>" in inbox_output(inbox)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'"just a string"',
        b"{}",
        b'{"text": ""}',
        b'{"text": "   "}',
        b'{"blocks": []}',
        b'{"text": 42}',
    ],
    ids=[
        "malformed",
        "empty",
        "not-utf8",
        "array",
        "string",
        "no-fields",
        "empty-text",
        "blank-text",
        "empty-blocks",
        "text-not-string",
    ],
)
def test_bad_payload_is_rejected_with_invalid_payload(inbox: SlackInbox, body: bytes) -> None:
    answer = post(inbox.url, body)

    assert (answer.status, answer.body) == (400, "invalid_payload")
    assert inbox.messages == []
    assert inbox.request_count == 1


_HEADER = {"type": "header", "text": {"type": "plain_text", "text": "Title"}}
_BUTTON = {"type": "button", "text": {"type": "plain_text", "text": "Open"}, "url": "http://x"}
BAD_BLOCKS: dict[str, Any] = {
    "not-a-list": {"type": "section"},
    "unknown-type": [{"type": "video"}],
    "block-not-object": ["header"],
    "header-mrkdwn": [{"type": "header", "text": {"type": "mrkdwn", "text": "Title"}}],
    "header-too-long": [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}],
    "header-empty": [{"type": "header", "text": {"type": "plain_text", "text": ""}}],
    "section-empty": [{"type": "section"}],
    "section-text-too-long": [_section("x" * 3001)],
    "section-text-wrong-type": [{"type": "section", "text": {"type": "html", "text": "x"}}],
    "eleven-fields": [
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11},
    ],
    "field-too-long": [
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]},
    ],
    "context-empty": [{"type": "context", "elements": []}],
    "actions-select": [{"type": "actions", "elements": [{"type": "static_select"}]}],
    "button-text-too-long": [
        {
            "type": "actions",
            "elements": [{**_BUTTON, "text": {"type": "plain_text", "text": "b" * 76}}],
        }
    ],
    "button-text-mrkdwn": [
        {"type": "actions", "elements": [{**_BUTTON, "text": {"type": "mrkdwn", "text": "b"}}]}
    ],
    "button-url-too-long": [
        {"type": "actions", "elements": [{**_BUTTON, "url": "http://x/" + "u" * 3000}]}
    ],
    "fifty-one-blocks": [_HEADER] * 51,
}


@pytest.mark.parametrize("blocks", BAD_BLOCKS.values(), ids=BAD_BLOCKS.keys())
def test_bad_blocks_are_rejected_with_invalid_blocks(inbox: SlackInbox, blocks: Any) -> None:
    answer = post_json(inbox.url, {"text": "fallback", "blocks": blocks})

    assert (answer.status, answer.body) == (400, "invalid_blocks")
    assert inbox.messages == []
    assert "rejected (invalid_blocks)" in inbox_output(inbox)


def test_limits_are_inclusive() -> None:
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
        _section("s" * 3000),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2000}] * 10},
        {"type": "divider"},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}]},
        {
            "type": "actions",
            "elements": [
                {**_BUTTON, "text": {"type": "plain_text", "text": "b" * 75}, "url": "u" * 3000}
            ],
        },
    ]
    assert block_kit_problems(blocks + [_HEADER] * 44) == []
    assert block_kit_problems(blocks + [_HEADER] * 45) == ["51 blocks, at most 50"]


def test_scripted_failures_then_recovery(inbox: SlackInbox) -> None:
    inbox.respond_next(500)
    inbox.respond_next(429, retry_after=7)

    first = post_json(inbox.url, {"text": "one"})
    second = post_json(inbox.url, {"text": "two"})
    third = post_json(inbox.url, {"text": "three"})

    assert (first.status, first.body) == (500, "internal_error")
    assert (second.status, second.body, second.headers["Retry-After"]) == (429, "rate_limited", "7")
    assert (third.status, third.body) == (200, "ok")
    assert [m.text for m in inbox.messages] == ["three"]
    assert inbox.request_count == 3


def test_wait_for_times_out_without_messages(inbox: SlackInbox) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 messages"):
        inbox.wait_for(1, timeout=0.05)


def test_chat_post_message_through_slack_sdk(inbox: SlackInbox) -> None:
    client = WebClient(token="xoxb-test-token", base_url=inbox.api_url)
    payload = render_slack(trained_notice()).to_payload()

    response = client.chat_postMessage(
        channel="#taxiops", text=payload["text"], blocks=payload["blocks"]
    )

    assert response["ok"] is True
    [message] = inbox.wait_for(1)
    assert (message.endpoint, message.channel) == ("chat.postMessage", "#taxiops")
    assert message.button_urls == [f"{UI_URL}/runs/flow-run/{FLOW_RUN_ID}"]
    assert "Slack #taxiops" in inbox_output(inbox)


def test_chat_post_message_errors_like_slack(inbox: SlackInbox) -> None:
    with pytest.raises(SlackApiError) as no_channel:
        WebClient(token="xoxb-t", base_url=inbox.api_url).chat_postMessage(channel="", text="x")
    with pytest.raises(SlackApiError) as bad_blocks:
        WebClient(token="xoxb-t", base_url=inbox.api_url).chat_postMessage(
            channel="#c", text="x", blocks=[{"type": "video"}]
        )

    assert no_channel.value.response["error"] == "channel_not_found"
    assert bad_blocks.value.response["error"] == "invalid_blocks"
    assert inbox.messages == []


def test_stop_closes_the_port_and_is_idempotent(tmp_path: Path) -> None:
    inbox = SlackInbox(echo=False).start()
    port = inbox.port
    inbox.stop()
    inbox.stop()

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


@pytest.mark.timeout(60)
def test_serve_inbox_runs_until_ctrl_c(tmp_path: Path) -> None:
    log_path = tmp_path / "inbox.jsonl"
    code = (
        "import sys; from pathlib import Path; from taxiops.notify.inbox import serve_inbox; "
        "serve_inbox('127.0.0.1', 0, Path(sys.argv[1]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(log_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(2)]
        url = banner[1].split("Slack webhook URL: ")[1].strip()

        assert post_json(url, {"text": "hello from the test"}).status == 200
        printed = ""
        while "hello from the test" not in printed:
            printed += process.stdout.readline()

        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, err
    assert "taxiops inbox stopped." in out
    assert "Traceback" not in err
    assert json.loads(log_path.read_text())["payload"] == {"text": "hello from the test"}
