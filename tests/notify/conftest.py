"""Fixtures for the notify tests: a real local Slack inbox and fast retries."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from taxiops.notify import RetryPolicy, SlackInbox


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[SlackInbox]:
    """A running inbox on 127.0.0.1 printing into a buffer and logging to JSONL."""
    with SlackInbox(log_path=tmp_path / "inbox" / "messages.jsonl", stream=io.StringIO()) as box:
        yield box
    leftover = [t for t in threading.enumerate() if t.name == "taxiops-inbox"]
    assert not leftover, "the inbox thread outlived stop()"


@pytest.fixture
def fast_retry() -> RetryPolicy:
    """Three retries with 10 ms backoff: the retry paths without slow tests."""
    return RetryPolicy(
        max_retries=3, backoff_seconds=0.01, max_retry_after_seconds=5, timeout_seconds=5
    )
