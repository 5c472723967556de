"""A local stand-in for Slack on 127.0.0.1, for demos without a Slack account and for tests.

`SlackInbox` answers like Slack's incoming webhooks (`ok`, or HTTP 400
`invalid_payload` / `invalid_blocks`), like `chat.postMessage` under `/api/`, and
takes apprise `json://` posts under `/apprise`. Each accepted message is kept in
memory, appended to a JSONL file if one is given, and printed readably: the
terminal of `taxiops inbox` is where a demo user reads the alerts.

Tests script failures with `respond_next(500)` or `respond_next(429, retry_after=1)`,
switch the whole inbox between fault modes with `set_mode`: "down" (the port is closed:
connection refused), "error" (HTTP 500 to every post), "paced" (like Slack: one post
a second, otherwise 429 with `Retry-After: 1`) and "up", and wait for deliveries with
`wait_for(count)`.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, TextIO, cast
from urllib.parse import parse_qs

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from taxiops.lifecycle import Lifecycle
from taxiops.notify.render import BLOCKS_MAX, FIELD_TEXT_MAX

Endpoint = Literal["webhook", "chat.postMessage", "apprise"]
FaultMode = Literal["up", "down", "error", "paced"]

KNOWN_BLOCK_TYPES = frozenset({"header", "section", "context", "divider", "actions"})
_TEXT_TYPES = frozenset({"plain_text", "mrkdwn"})
_MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class InboxMessage:
    """One message the inbox accepted."""

    endpoint: Endpoint
    payload: dict[str, Any]
    received_at: datetime
    channel: str | None = None

    @property
    def text(self) -> str | None:
        """The fallback `text` (Slack) or `message` (apprise)."""
        value = self.payload.get("message" if self.endpoint == "apprise" else "text")
        return value if isinstance(value, str) else None

    @property
    def blocks(self) -> list[dict[str, Any]]:
        """The Block Kit blocks, empty when there are none."""
        blocks = self.payload.get("blocks")
        return [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []

    @property
    def header(self) -> str | None:
        """Text of the first header block, or the apprise title."""
        if self.endpoint == "apprise":
            title = self.payload.get("title")
            return title if isinstance(title, str) else None
        for block in self.blocks:
            if block.get("type") == "header":
                return str(block.get("text", {}).get("text", ""))
        return None

    @property
    def fields(self) -> dict[str, str]:
        """Section fields as plain `name -> value`."""
        found: dict[str, str] = {}
        for block in self.blocks:
            for item in block.get("fields", []) if block.get("type") == "section" else []:
                name, _, value = plain_mrkdwn(str(item.get("text", ""))).partition("\n")
                found[name.strip()] = value.strip()
        return found

    @property
    def button_urls(self) -> list[str]:
        """URLs of the buttons in actions blocks."""
        return [
            str(element["url"])
            for block in self.blocks
            if block.get("type") == "actions"
            for element in block.get("elements", [])
            if isinstance(element, dict) and "url" in element
        ]

    def describe(self) -> str:
        """The message as a demo user reads it in the terminal."""
        when = self.received_at.astimezone().strftime("%H:%M:%S")
        where = {
            "webhook": "Slack webhook",
            "chat.postMessage": f"Slack {self.channel or ''}".rstrip(),
            "apprise": f"apprise ({self.payload.get('type', 'info')})",
        }[self.endpoint]
        lines = [f"\u2500\u2500 {where} \u00b7 {when} ".ljust(72, "\u2500")]
        if self.endpoint == "apprise":
            lines += [str(self.payload.get("title") or ""), str(self.payload.get("message") or "")]
        elif self.blocks:
            lines += _describe_blocks(self.blocks)
        else:
            lines.append(plain_mrkdwn(self.text or ""))
        return "\n".join(line for line in lines if line) + "\n"

    def to_json(self) -> str:
        """One JSONL line: when, where and what."""
        return json.dumps(
            {
                "received_at": self.received_at.isoformat(),
                "endpoint": self.endpoint,
                "channel": self.channel,
                "payload": self.payload,
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class ScriptedResponse:
    """An answer the inbox gives instead of handling the next request."""

    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    endpoint: Endpoint | None = None  # None: whichever request comes next


class SlackInbox(Lifecycle):
    """A Slack-compatible webhook server on a background thread; a context manager.

    `port=0` picks a free port; read `url` after `start()`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_path: Path | None = None,
        stream: TextIO | None = None,
        echo: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.echo = echo
        self._stream = stream
        self._token = secrets.token_hex(12)
        self._messages: list[InboxMessage] = []
        self._scripted: deque[ScriptedResponse] = deque()
        self._requests = 0
        self._requests_by_endpoint: dict[Endpoint, int] = {}
        self._changed = threading.Condition()
        self._server: _InboxServer | None = None
        self._thread: threading.Thread | None = None
        self._mode: FaultMode = "up"
        self._pace_seconds = 1.0
        self._last_paced = 0.0

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> SlackInbox:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        server = _InboxServer((self.host, self.port), _InboxHandler, self)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="taxiops-inbox"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # --- fault modes --------------------------------------------------------------------

    @property
    def mode(self) -> FaultMode:
        return self._mode

    def set_mode(self, mode: FaultMode, *, pace_seconds: float = 1.0) -> None:
        """Answer every later post as `mode` says: "up" handles it, "error" answers HTTP 500,
        "paced" takes one post per `pace_seconds` and answers the others 429 with
        `Retry-After`, "down" closes the port (connection refused) until another mode."""
        with self._changed:
            previous, self._mode = self._mode, mode
            self._pace_seconds = pace_seconds
        if mode == "down" and previous != "down":
            self.stop()
        elif mode != "down" and previous == "down":
            self.start()  # the same port: `port` kept the one first bound

    def busiest_second(self) -> int:
        """The most messages accepted within any one second (a sliding window)."""
        times = sorted(message.received_at.timestamp() for message in self.messages)
        most = start = 0
        for end, moment in enumerate(times):
            while moment - times[start] >= 1.0:
                start += 1
            most = max(most, end - start + 1)
        return most

    def _fault(self) -> ScriptedResponse | None:
        with self._changed:
            if self._mode == "error":
                return ScriptedResponse(500, _default_body(500))
            if self._mode == "paced":
                now = time.monotonic()
                if now - self._last_paced < self._pace_seconds:
                    wait = max(1, math.ceil(self._pace_seconds))
                    return ScriptedResponse(429, "rate_limited", {"Retry-After": str(wait)})
                self._last_paced = now
            return None

    # --- addresses --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The incoming-webhook URL, shaped like Slack's (the last part plays the token)."""
        return f"{self.base_url}/services/TLOCAL/BLOCAL/{self._token}"

    @property
    def token(self) -> str:
        """The secret part of `url`."""
        return self._token

    @property
    def api_url(self) -> str:
        """Base URL for `slack_sdk.WebClient(base_url=...)`: `chat.postMessage` lives under it."""
        return f"{self.base_url}/api/"

    @property
    def apprise_url(self) -> str:
        """An apprise URL that posts here."""
        return f"json://{self.host}:{self.port}/apprise"

    # --- what arrived -----------------------------------------------------------------

    @property
    def messages(self) -> list[InboxMessage]:
        """Accepted messages, oldest first (a copy)."""
        with self._changed:
            return list(self._messages)

    @property
    def request_count(self) -> int:
        """Every POST received: accepted, rejected and scripted."""
        with self._changed:
            return self._requests

    def requests_to(self, endpoint: Endpoint) -> int:
        """POSTs received on one endpoint: accepted, rejected and scripted."""
        with self._changed:
            return self._requests_by_endpoint.get(endpoint, 0)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[InboxMessage]:
        """Block until at least `count` messages were accepted; raise `TimeoutError` if not."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"inbox got {len(self._messages)} of {count} messages in {timeout:g} s"
                )
            return list(self._messages)

    def clear(self) -> None:
        """Forget messages, counts and scripted answers."""
        with self._changed:
            self._messages.clear()
            self._scripted.clear()
            self._requests = 0
            self._requests_by_endpoint.clear()

    def respond_next(
        self,
        status: int,
        body: str = "",
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Answer the next `times` requests (to `endpoint`, or any) with `status` instead of
        handling them."""
        all_headers = dict(headers or {})
        if retry_after is not None:
            all_headers["Retry-After"] = f"{retry_after:g}"
        text = body or _default_body(status)
        with self._changed:
            self._scripted.extend(
                ScriptedResponse(status, text, all_headers, endpoint) for _ in range(times)
            )

    # --- used by the handler ----------------------------------------------------------

    def _next_scripted(self, endpoint: Endpoint) -> ScriptedResponse | None:
        with self._changed:
            self._requests += 1
            self._requests_by_endpoint[endpoint] = self._requests_by_endpoint.get(endpoint, 0) + 1
            self._changed.notify_all()
            for index, scripted in enumerate(self._scripted):
                if scripted.endpoint in (None, endpoint):
                    del self._scripted[index]
                    return scripted
            return None

    def _accept(self, message: InboxMessage) -> None:
        with self._changed:
            self._messages.append(message)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as log:
                    log.write(message.to_json() + "\n")
            if self.echo:
                self._print(message.describe())
            self._changed.notify_all()

    def _print(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text)
        stream.flush()


def serve_inbox(host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None) -> None:
    """Run a `SlackInbox` in the foreground, printing every message, until Ctrl-C."""
    inbox = SlackInbox(host, port, log_path=log_path)
    with inbox:
        print(f"taxiops inbox listening on {inbox.base_url}", flush=True)
        print(f"  Slack webhook URL: {inbox.url}", flush=True)
        print(f"  Slack API base URL: {inbox.api_url}", flush=True)
        print(f"  apprise URL: {inbox.apprise_url}", flush=True)
        if log_path is not None:
            print(f"  appending messages to {log_path}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        forever = threading.Event()
        try:
            while not forever.wait(3600):
                pass
        except KeyboardInterrupt:
            print("\ntaxiops inbox stopped.", flush=True)


# --- Block Kit checks -----------------------------------------------------------------


def block_kit_problems(blocks: object) -> list[str]:
    """What is wrong with `blocks` for the parts of Block Kit taxiops uses; empty if nothing.

    slack_sdk's block classes check their own limits (`Block.parse`, then `to_dict()`, which
    validates); the shape rules they let through, and the two limits they do not hold
    (`render.BLOCKS_MAX`, `render.FIELD_TEXT_MAX`), are checked here."""
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    problems: list[str] = []
    if len(blocks) > BLOCKS_MAX:
        problems.append(f"{len(blocks)} blocks, at most {BLOCKS_MAX}")
    for index, block in enumerate(blocks):
        where = f"blocks[{index}]"
        if not isinstance(block, dict):
            problems.append(f"{where} is not an object")
            continue
        kind = block.get("type")
        if kind not in KNOWN_BLOCK_TYPES:
            problems.append(f"{where}: unknown type {kind!r}")
            continue
        try:
            parsed = Block.parse(block)
            if parsed is not None:
                parsed.to_dict()
        except SlackObjectFormationError as exc:
            problems.append(f"{where}: {exc}")
            continue
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            problems.append(f"{where}: not a {kind} block ({type(exc).__name__})")
            continue
        problems += _BLOCK_SHAPES[kind](block, where)
    return problems


def _text_problems(obj: object, where: str, *, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where} must be a text object"]
    kind = obj.get("type")
    allowed = {"plain_text"} if plain_only else _TEXT_TYPES
    if kind not in allowed:
        return [f"{where}.type must be {' or '.join(sorted(allowed))}, not {kind!r}"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}.text must be a non-empty string"]
    return []


def _header_shape(block: dict[str, Any], where: str) -> list[str]:
    return _text_problems(block.get("text"), f"{where}.text", plain_only=True)


def _section_shape(block: dict[str, Any], where: str) -> list[str]:
    text, fields = block.get("text"), block.get("fields")
    problems = [] if text is None else _text_problems(text, f"{where}.text")
    if fields is not None:
        if not isinstance(fields, list) or not fields:
            return [*problems, f"{where}.fields must be a non-empty list"]
        for i, item in enumerate(fields):
            at = f"{where}.fields[{i}]"
            problems += _text_problems(item, at)
            if isinstance(item, dict) and len(str(item.get("text", ""))) > FIELD_TEXT_MAX:
                problems.append(f"{at}.text has more than {FIELD_TEXT_MAX} characters")
    return problems


def _context_shape(block: dict[str, Any], where: str) -> list[str]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [f"{where}.elements must be a non-empty list"]
    problems = []
    for i, element in enumerate(elements):
        if isinstance(element, dict) and element.get("type") == "image":
            if not (element.get("image_url") and element.get("alt_text")):
                problems.append(f"{where}.elements[{i}]: an image needs image_url and alt_text")
        else:
            problems += _text_problems(element, f"{where}.elements[{i}]")
    return problems


def _divider_shape(block: dict[str, Any], where: str) -> list[str]:
    return []


def _actions_shape(block: dict[str, Any], where: str) -> list[str]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [f"{where}.elements must be a non-empty list"]
    problems = []
    for i, element in enumerate(elements):
        at = f"{where}.elements[{i}]"
        if not isinstance(element, dict) or element.get("type") != "button":
            problems.append(f"{at} must be a button")
            continue
        problems += _text_problems(element.get("text"), f"{at}.text", plain_only=True)
    return problems


_BLOCK_SHAPES = {
    "header": _header_shape,
    "section": _section_shape,
    "context": _context_shape,
    "divider": _divider_shape,
    "actions": _actions_shape,
}


# --- reading messages back as text ----------------------------------------------------

_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_CODE = re.compile(r"`([^`\n]*)`")


def plain_mrkdwn(text: str) -> str:
    """Slack mrkdwn as a terminal shows it: no `*`/backtick markup, entities decoded."""
    text = text.replace("```", "")
    text = _CODE.sub(r"\1", _BOLD.sub(r"\1", text))
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _describe_blocks(blocks: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(str(block.get("text", {}).get("text", "")))
        elif kind == "section":
            if isinstance(block.get("text"), dict):
                lines.append(plain_mrkdwn(str(block["text"].get("text", ""))))
            for item in block.get("fields") or []:
                name, _, value = plain_mrkdwn(str(item.get("text", ""))).partition("\n")
                lines.append(f"  {name.strip()}: {value.strip()}" if value else f"  {name}")
        elif kind == "context":
            parts = [plain_mrkdwn(str(e.get("text", ""))) for e in block.get("elements", [])]
            lines.append(" \u00b7 ".join(p for p in parts if p))
        elif kind == "divider":
            lines.append("\u2500" * 20)
        elif kind == "actions":
            for element in block.get("elements", []):
                label = element.get("text", {}).get("text", "button")
                lines.append(f"[{label}] {element.get('url', '')}".rstrip())
    return lines


# --- HTTP plumbing --------------------------------------------------------------------


class _InboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], inbox: SlackInbox
    ) -> None:
        self.inbox = inbox
        super().__init__(address, handler)


class _InboxHandler(BaseHTTPRequestHandler):
    server_version = "taxiops-inbox/1"

    @property
    def inbox(self) -> SlackInbox:
        return cast(_InboxServer, self.server).inbox

    def log_message(self, format: str, *args: Any) -> None:
        # Keep the terminal for messages; the request path holds the webhook token.
        return

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("", "/health"):
            self._answer(200, f"taxiops inbox: {len(self.inbox.messages)} messages")
        else:
            self._answer(404, "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, _MAX_BODY_BYTES)) if length > 0 else b""
        path = self.path.split("?", 1)[0]
        endpoint: Endpoint = (
            "chat.postMessage"
            if path.startswith("/api/")
            else "apprise"
            if path.startswith("/apprise")
            else "webhook"
        )
        scripted = self.inbox._next_scripted(endpoint) or self.inbox._fault()
        if scripted is not None:
            self._answer(scripted.status, scripted.body, scripted.headers)
            return
        if path.startswith("/api/"):
            self._chat_post_message(path, raw)
        elif path.startswith("/apprise"):
            self._apprise(raw)
        else:
            self._webhook(raw)

    # Slack incoming webhook -----------------------------------------------------------

    def _webhook(self, raw: bytes) -> None:
        payload = _json_object(raw)
        if payload is None:
            self._answer(400, "invalid_payload")
            return
        error = _message_error(payload)
        if error is not None:
            self._reject(*error)
            self._answer(400, error[0])
            return
        self.inbox._accept(InboxMessage("webhook", payload, datetime.now(UTC)))
        self._answer(200, "ok")

    # Slack Web API chat.postMessage ---------------------------------------------------

    def _chat_post_message(self, path: str, raw: bytes) -> None:
        if path.rstrip("/") != "/api/chat.postMessage":
            self._answer_api({"ok": False, "error": "unknown_method"})
            return
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            self._answer_api({"ok": False, "error": "not_authed"})
            return
        payload = _api_arguments(raw, self.headers.get("Content-Type", ""))
        if payload is None:
            self._answer_api({"ok": False, "error": "invalid_arguments"})
            return
        channel = payload.get("channel")
        if not isinstance(channel, str) or not channel:
            self._answer_api({"ok": False, "error": "channel_not_found"})
            return
        error = _message_error(payload)
        if error is not None:
            self._reject(*error)
            code = "no_text" if error[0] == "invalid_payload" else error[0]
            self._answer_api({"ok": False, "error": code})
            return
        message = {k: v for k, v in payload.items() if k != "channel"}
        self.inbox._accept(InboxMessage("chat.postMessage", message, datetime.now(UTC), channel))
        ts = f"{time.time():.6f}"
        self._answer_api({"ok": True, "channel": channel, "ts": ts, "message": message})

    # apprise json:// ------------------------------------------------------------------

    def _apprise(self, raw: bytes) -> None:
        payload = _json_object(raw)
        if payload is None or not isinstance(payload.get("message"), str):
            self._answer(400, "invalid_payload")
            return
        self.inbox._accept(InboxMessage("apprise", payload, datetime.now(UTC)))
        self._answer(200, "ok")

    def _reject(self, code: str, detail: str) -> None:
        if self.inbox.echo:
            self.inbox._print(f"\u2500\u2500 rejected ({code}): {detail}\n")

    # answering ------------------------------------------------------------------------

    def _answer(self, status: int, body: str, headers: Mapping[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _answer_api(self, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _api_arguments(raw: bytes, content_type: str) -> dict[str, Any] | None:
    if "application/json" in content_type:
        return _json_object(raw)
    try:
        form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8")).items()}
    except UnicodeDecodeError:
        return None
    arguments: dict[str, Any] = dict(form)
    if "blocks" in form:
        try:
            arguments["blocks"] = json.loads(form["blocks"])
        except ValueError:
            return None
    return arguments


def _message_error(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    """Slack's error code for a message payload and why, or None when it would be accepted."""
    text, blocks = payload.get("text"), payload.get("blocks")
    if text is not None and not isinstance(text, str):
        return "invalid_payload", "text must be a string"
    if blocks is not None and not isinstance(blocks, list):
        return "invalid_blocks", "blocks must be a list"
    has_text = bool(text and text.strip())
    if not has_text and not blocks:
        return "invalid_payload", "a message needs text or blocks"
    problems = block_kit_problems(blocks) if blocks else []
    if problems:
        return "invalid_blocks", "; ".join(problems[:3])
    return None


def _default_body(status: int) -> str:
    return {
        400: "invalid_payload",
        403: "invalid_token",
        404: "no_service",
        410: "channel_is_archived",
        429: "rate_limited",
    }.get(status, "internal_error" if status >= 500 else "error")
