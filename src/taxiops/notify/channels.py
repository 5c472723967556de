"""Sending messages: Slack incoming webhooks, Slack `chat.postMessage`, and apprise.

Secrets arrive as `SecretStr` and are unwrapped only where a client is built.
Every failure raises `NotificationDeliveryError`, whose text never contains a
webhook URL, token or apprise URL; the client libraries' own log lines about the
call are masked the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    Jitter,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

from taxiops.errors import NotificationDeliveryError
from taxiops.notify._redact import private_logger, redact, redacted_logger
from taxiops.notify.render import NotifyLevel, SlackMessage
from taxiops.settings import is_loopback

_LOGGER_NAME = "taxiops.notify"
SLACK_WEBHOOK = "slack-webhook"
SLACK_API = "slack-api"
APPRISE = "apprise"

SlackPayload = SlackMessage | Mapping[str, Any]

# apprise logs target URLs at DEBUG, and requests' urllib3 logs each request path.
_APPRISE_LOGGERS = ("apprise", "urllib3.connectionpool")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a Slack send tries: bounded retries with exponential backoff.

    Connection errors and HTTP 5xx wait `backoff_seconds`, doubling each retry,
    plus up to 25% jitter. HTTP 429 waits what `Retry-After` says; a wait longer
    than `max_retry_after_seconds` is not worth blocking on and fails at once.
    """

    max_retries: int = 3
    backoff_seconds: float = 0.5
    max_retry_after_seconds: float = 60.0
    timeout_seconds: int = 10


DEFAULT_RETRY = RetryPolicy()


def send_slack_webhook(
    url: SecretStr, payload: SlackPayload, *, retry: RetryPolicy = DEFAULT_RETRY
) -> None:
    """POST `payload` to a Slack incoming webhook; raise `NotificationDeliveryError` on HTTP >= 400.

    Any http(s) URL is accepted, so the local inbox on 127.0.0.1 works as well.
    """
    from slack_sdk.webhook import WebhookClient

    secret = url.get_secret_value().strip()
    logger = private_logger(_LOGGER_NAME, [secret])
    tally = _RetryTally(SLACK_WEBHOOK, logger)
    client = WebhookClient(
        secret,
        timeout=retry.timeout_seconds,
        logger=logger,
        retry_handlers=_retry_handlers(retry, tally),
    )
    if _is_loopback(secret):
        client.proxy = None  # A proxy from the environment cannot reach our 127.0.0.1.
    body = payload.to_payload() if isinstance(payload, SlackMessage) else dict(payload)
    try:
        response = client.send_dict(body)
    except NotificationDeliveryError:
        raise
    except Exception as exc:
        raise NotificationDeliveryError(
            SLACK_WEBHOOK,
            f"could not reach Slack after {tally.retries} retries: {_describe(exc, [secret])}",
            retries=tally.retries,
        ) from None
    if response.status_code >= 400:
        raise NotificationDeliveryError(
            SLACK_WEBHOOK,
            _http_failure(response.status_code, str(response.body), tally.retries, [secret]),
            status=response.status_code,
            retries=tally.retries,
        )


def send_slack_message(
    token: SecretStr,
    channel: str,
    payload: SlackPayload,
    *,
    base_url: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> None:
    """Post `payload` to `channel` with a bot token (`chat.postMessage`).

    `base_url` points the client elsewhere than `https://slack.com/api/` (the inbox, in tests).
    """
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    secret = token.get_secret_value().strip()
    if not channel:
        raise NotificationDeliveryError(SLACK_API, "no channel set; set SLACK_CHANNEL")
    logger = private_logger(_LOGGER_NAME, [secret])
    tally = _RetryTally(SLACK_API, logger)
    options: dict[str, Any] = {"base_url": base_url} if base_url else {}
    client = WebClient(
        token=secret,
        timeout=retry.timeout_seconds,
        logger=logger,
        retry_handlers=_retry_handlers(retry, tally),
        **options,
    )
    if base_url and _is_loopback(base_url):
        client.proxy = None
    body = payload.to_payload() if isinstance(payload, SlackMessage) else dict(payload)
    try:
        client.chat_postMessage(channel=channel, text=body.get("text"), blocks=body.get("blocks"))
    except SlackApiError as exc:
        status = int(exc.response.status_code)
        error = str(exc.response.get("error") or "unknown_error")
        raise NotificationDeliveryError(
            SLACK_API,
            _http_failure(status, error, tally.retries, [secret]),
            status=status,
            retries=tally.retries,
        ) from None
    except NotificationDeliveryError:
        raise
    except Exception as exc:
        raise NotificationDeliveryError(
            SLACK_API,
            f"could not reach Slack after {tally.retries} retries: {_describe(exc, [secret])}",
            retries=tally.retries,
        ) from None


def send_apprise(urls: SecretStr, title: str, body: str, *, level: NotifyLevel = "info") -> None:
    """Send `title` and `body` to every comma-separated apprise URL; raise if any fails."""
    from apprise import Apprise, AppriseAsset, NotifyType

    targets = [part.strip() for part in urls.get_secret_value().split(",") if part.strip()]
    if not targets:
        raise NotificationDeliveryError(APPRISE, "no URLs configured; set TAXIOPS_APPRISE_URLS")
    with ExitStack() as stack:
        for name in _APPRISE_LOGGERS:
            stack.enter_context(redacted_logger(name, targets))
        asset = AppriseAsset(
            app_id="taxiops", app_desc="taxiops notifications", storage_mode="memory"
        )
        client = Apprise(asset=asset)
        for number, target in enumerate(targets, start=1):
            if not client.add(target):
                scheme = target.partition("://")[0][:20] if "://" in target else "none"
                raise NotificationDeliveryError(
                    APPRISE,
                    f"URL #{number} of {len(targets)} (scheme {scheme!r}) is not a valid apprise "
                    "URL; check TAXIOPS_APPRISE_URLS",
                )
        try:
            result = client.notify(body=body, title=title, notify_type=NotifyType(level))
        except Exception as exc:
            raise NotificationDeliveryError(
                APPRISE, f"apprise raised {_describe(exc, targets)}"
            ) from None
    if not result:
        failed = [service.name for service in result if not service]
        names = ", ".join(redact(str(name), targets) for name in failed) or "all services"
        raise NotificationDeliveryError(
            APPRISE,
            f"{len(failed) or len(targets)} of {len(targets)} services failed ({names}); "
            "see the apprise log lines above",
        )


# --- retries --------------------------------------------------------------------------


class _RetryTally:
    """Counts the retries of one send and logs each, without the URL."""

    def __init__(self, channel: str, logger: logging.Logger) -> None:
        self.channel = channel
        self.logger = logger
        self.retries = 0

    def note(self, reason: str, delay: float, limit: int) -> None:
        self.retries += 1
        self.logger.warning(
            "%s: %s; retry %d of %d in %.1f s", self.channel, reason, self.retries, limit, delay
        )


class _ProportionalJitter(Jitter):
    """Adds up to 25% to a delay (slack-sdk's own jitter adds up to a whole second)."""

    def recalculate(self, duration: float) -> float:
        return duration * (1 + random.uniform(0, 0.25))


def _retry_handlers(policy: RetryPolicy, tally: _RetryTally) -> list[RetryHandler]:
    backoff = BackoffRetryIntervalCalculator(
        backoff_factor=policy.backoff_seconds, jitter=_ProportionalJitter()
    )
    limit = policy.max_retries
    return [
        _ConnectionErrorRetry(tally, max_retry_count=limit, interval_calculator=backoff),
        _ServerErrorRetry(tally, max_retry_count=limit, interval_calculator=backoff),
        _RateLimitRetry(tally, policy, max_retry_count=limit),
    ]


class _CountedRetry(RetryHandler):
    """The base of taxiops's retry handlers: each retry waits `_delay`, then is counted and
    logged with `_reason`. Put it before the slack-sdk handler whose `_can_retry` it keeps."""

    def __init__(self, tally: _RetryTally, **options: Any) -> None:
        super().__init__(**options)
        self._tally = tally

    def _reason(self, response: HttpResponse | None, error: Exception | None) -> str:
        raise NotImplementedError

    def _delay(self, state: RetryState, response: HttpResponse | None) -> float:
        return self.interval_calculator.calculate_sleep_duration(state.current_attempt)

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        delay = self._delay(state, response)
        self._tally.note(self._reason(response, error), delay, self.max_retry_count)
        state.next_attempt_requested = True
        time.sleep(delay)
        state.increment_current_attempt()


class _ConnectionErrorRetry(_CountedRetry, ConnectionErrorRetryHandler):
    def _reason(self, response: HttpResponse | None, error: Exception | None) -> str:
        return f"connection failed ({type(error).__name__})"


class _ServerErrorRetry(_CountedRetry, ServerErrorRetryHandler):
    """Every 5xx, not only 500 and 503 as slack-sdk's handler."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and 500 <= response.status_code < 600

    def _reason(self, response: HttpResponse | None, error: Exception | None) -> str:
        return f"Slack answered HTTP {response.status_code if response is not None else '?'}"


class _RateLimitRetry(_CountedRetry, RateLimitErrorRetryHandler):
    """Waits what `Retry-After` says (seconds or an HTTP date), if that is not too long."""

    def __init__(self, tally: _RetryTally, policy: RetryPolicy, **options: Any) -> None:
        super().__init__(tally, **options)
        self._cap = policy.max_retry_after_seconds

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        return retry_after_seconds(response.headers) <= self._cap

    def _delay(self, state: RetryState, response: HttpResponse | None) -> float:
        return self._retry_after(response) + random.uniform(0, 0.1)

    def _reason(self, response: HttpResponse | None, error: Exception | None) -> str:
        return f"rate limited (Retry-After {self._retry_after(response):g} s)"

    @staticmethod
    def _retry_after(response: HttpResponse | None) -> float:
        return retry_after_seconds(response.headers if response is not None else {})


def retry_after_seconds(headers: Mapping[str, Any]) -> float:
    """Seconds a `Retry-After` header asks for; 1 when it is missing or unreadable."""
    raw: Any = None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            break
    if raw is None:
        return 1.0
    text = str(raw).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, when.timestamp() - time.time())


# --- helpers --------------------------------------------------------------------------


def _http_failure(status: int, body: str, retries: int, secrets: list[str]) -> str:
    said = redact(body.strip(), secrets)[:200] or "(empty body)"
    if status in (401, 403, 404, 410) or said in ("invalid_auth", "not_authed", "invalid_token"):
        what = "check the webhook URL or token (revoked, wrong, or the channel is archived)"
    elif status == 429 or status >= 500:
        what = f"Slack is rate limiting or unavailable; gave up after {retries} retries"
    else:
        what = "Slack rejected the message"
    return f"HTTP {status} {said!r}: {what}"


def _describe(exc: BaseException, secrets: list[str]) -> str:
    return redact(f"{type(exc).__name__}: {exc}", secrets)[:300]


def _is_loopback(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback(host)
