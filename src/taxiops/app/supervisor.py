"""Keep a child of `taxiops up` running: restart it with backoff when it ends unexpectedly,
give up after too many quick failures in a row.

A child is anything with `start` (bring one incarnation up) and `wait` (until it ends);
`supervise` runs the loop, logs each restart in one line, and raises `ChildFailedError`
once the child keeps failing, which `taxiops up` reports as its exit reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from taxiops.errors import ChildFailedError
from taxiops.intake import Backoff

logger = logging.getLogger("taxiops.app.supervisor")


class Child(Protocol):
    """One supervised child."""

    @property
    def name(self) -> str: ...

    async def start(self, stop: asyncio.Event) -> bool:
        """Bring an incarnation up (no-op if one runs); False if `stop` was set first.
        Raises if it cannot start."""

    async def wait(self, stop: asyncio.Event) -> str:
        """Wait until the incarnation ends, or `stop` is set; return (or raise) why."""


@dataclass(frozen=True)
class RestartPolicy:
    """How soon to restart and when to give up.

    A child that ends within `quick_failure_seconds` of its start (or cannot start) counts as
    a quick failure; restarts after one wait `backoff.delay(n)` for the n-th in a row, and
    the `max_quick_failures`-th gives up. A child that ran longer restarts at once.
    """

    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 2.0, 30.0))
    quick_failure_seconds: float = 10.0
    max_quick_failures: int = 5


@dataclass
class FailureStreak:
    """Counts quick failures in a row under a `RestartPolicy`."""

    name: str
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    quick_failures: int = 0
    restarts: int = 0

    def failed(self, ran_seconds: float, reason: str) -> float:
        """Record an end after `ran_seconds`; return the delay before the next start, or
        raise `ChildFailedError` once quick failures reach the limit."""
        if ran_seconds < self.policy.quick_failure_seconds:
            self.quick_failures += 1
            if self.quick_failures >= self.policy.max_quick_failures:
                raise ChildFailedError(self.name, self.quick_failures, reason)
        else:
            self.quick_failures = 0
        self.restarts += 1
        return self.policy.backoff.delay(self.quick_failures)


async def supervise(
    child: Child, stop: asyncio.Event, policy: RestartPolicy | None = None
) -> FailureStreak:
    """Keep `child` running until `stop` is set; returns its restart record then.

    Raises `ChildFailedError` when restarts keep failing."""
    streak = FailureStreak(child.name, policy or RestartPolicy())
    while not stop.is_set():
        started: float | None = None
        try:
            if not await child.start(stop):
                break
            started = time.monotonic()
            reason = await child.wait(stop)
        except Exception as exc:
            reason = describe(exc)
        if stop.is_set():
            break
        ran = 0.0 if started is None else time.monotonic() - started
        delay = streak.failed(ran, reason)
        logger.warning(
            "%s stopped after %.1fs (%s); restart %d in %.1fs",
            child.name,
            ran,
            _one_line(reason),
            streak.restarts,
            delay,
        )
        if await stopped_within(stop, delay):
            break
    return streak


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds`; True as soon as `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


def describe(exc: BaseException) -> str:
    """`Type: message` of the first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"
