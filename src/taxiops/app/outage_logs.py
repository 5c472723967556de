"""While the Prefect API is down, Prefect's events client, its `EventsWorker` and the
websockets library log an error (often with a traceback) for every event they fail to send.
`OutageLogSummary` lets the first of each kind through, then one line per kind per window,
saying how many it held back. Records of every other logger pass untouched.

`taxiops up` installs it on its own log handlers and, through a logging config that is
Prefect's own plus this filter (`PREFECT_LOGGING_SETTINGS_PATH`), in the processes it
starts: the flow runs and the server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OUTAGE_LOGGERS = ("EventsWorker", "prefect.events", "prefect._internal.concurrency", "websockets")
_FILTER_NAME = "taxiops_outage_summary"
_SETTINGS_PATH_VARIABLE = "PREFECT_LOGGING_SETTINGS_PATH"


@dataclass
class _Seen:
    since: float
    held_back: int = 0


class OutageLogSummary(logging.Filter):
    """The first warning or error of each (logger, message) from `loggers` passes whole;
    repeats within `window_seconds` are held back; the next one after passes as one line,
    with no traceback, counting those held back."""

    def __init__(
        self,
        window_seconds: float = 60.0,
        loggers: tuple[str, ...] = OUTAGE_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._window = window_seconds
        self._loggers = loggers
        self._clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self._loggers):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.since < self._window:
                seen.held_back += 1
                return False
            self._seen[key] = _Seen(now)
        if seen is not None:
            record.msg = (
                f"{record.getMessage()} (and {seen.held_back} more like it in "
                f"{now - seen.since:.0f}s; tracebacks held back)"
            )
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def install_outage_log_summary(summary: OutageLogSummary | None = None) -> None:
    """Add the filter to every handler of this process that Prefect's records reach."""
    summary = summary or OutageLogSummary()
    for name in ("", "prefect", "prefect._internal", *OUTAGE_LOGGERS):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, OutageLogSummary) for f in handler.filters):
                handler.addFilter(summary)


def write_logging_config(path: Path) -> Path:
    """Write Prefect's default logging config plus the filter on every handler to `path`,
    for `PREFECT_LOGGING_SETTINGS_PATH`; returns `path`."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH

    # Raw, not loaded: Prefect fills in its ${SETTING} templates when each process reads it.
    config: dict[str, Any] = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    config.setdefault("filters", {})[_FILTER_NAME] = {"()": f"{__name__}.OutageLogSummary"}
    for handler in config.get("handlers", {}).values():
        handler.setdefault("filters", []).append(_FILTER_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def quiet_api_outages(home: Path) -> Iterator[None]:
    """Summarise outage logs in this process and, unless the user set their own
    `PREFECT_LOGGING_SETTINGS_PATH`, in every process started inside the block."""
    install_outage_log_summary()
    if os.environ.get(_SETTINGS_PATH_VARIABLE):
        yield
        return
    path = write_logging_config(home / "prefect-logging.yml")
    os.environ[_SETTINGS_PATH_VARIABLE] = str(path)
    try:
        yield
    finally:
        os.environ.pop(_SETTINGS_PATH_VARIABLE, None)
