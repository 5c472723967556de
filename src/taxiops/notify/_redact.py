"""Keep webhook URLs, tokens and apprise URLs out of messages and logs.

Client libraries log request URLs (slack-sdk at INFO when it retries, apprise at
DEBUG) and put them in exception texts. Everything a channel logs or raises goes
through `redact` or a `RedactingFilter` first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

MASK = "***"


def secret_parts(secret: str) -> tuple[str, ...]:
    """The strings to hide for one secret: the whole value and its URL path, if any.

    The path alone is hidden too because libraries often log host and path apart.
    """
    parts = {secret.strip()}
    try:
        path = urlsplit(secret.strip()).path
    except ValueError:
        path = ""
    if len(path) > 1:
        parts.add(path)
    return tuple(sorted((p for p in parts if len(p) >= 4), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (and its URL path) replaced by `***`."""
    for secret in secrets:
        for part in secret_parts(secret):
            text = text.replace(part, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message of each record."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message, self._secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks may quote a URL; keep the type, drop the text.
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self._secrets
            )
        return True


def private_logger(name: str, secrets: Iterable[str], level: int = logging.INFO) -> logging.Logger:
    """A logger for one client that masks `secrets`, propagating to logger `name`.

    It is not registered with `logging.getLogger`, so its level and filter stay
    private to one call. slack-sdk logs URLs at DEBUG only when its logger's own
    level is DEBUG or lower; `level` defaults to INFO to keep those lines out.
    """
    logger = logging.Logger(f"{name}.client", level)
    logger.parent = logging.getLogger(name)
    logger.addFilter(RedactingFilter(secrets))
    return logger


@contextmanager
def redacted_logger(name: str, secrets: Iterable[str]) -> Iterator[logging.Logger]:
    """While active, mask `secrets` in everything logged through logger `name`."""
    logger = logging.getLogger(name)
    log_filter = RedactingFilter(secrets)
    logger.addFilter(log_filter)
    try:
        yield logger
    finally:
        logger.removeFilter(log_filter)
