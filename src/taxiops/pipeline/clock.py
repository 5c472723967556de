"""The work clock behind `pipeline_seconds`: time spent inside task functions.

A task's function is the work (parse a month, fit, score); around it Prefect looks up
the cache, records states and persists the result. `WorkClock.counting()` marks the steps
whose work counts; tasks made by `taxiops_task` add the time their function ran to the
clock counting where they were called (or submitted: Prefect copies the caller's context
into its task threads). Concurrent tasks add up, so the clock can exceed wall time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_counting: ContextVar[WorkClock | None] = ContextVar("taxiops_work_clock", default=None)


class WorkClock:
    """Seconds of work, added up from every thread that reports to it."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return self._seconds

    def add(self, seconds: float) -> None:
        with self._lock:
            self._seconds += seconds

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the functions of the tasks called or submitted inside."""
        token = _counting.set(self)
        try:
            yield
        finally:
            _counting.reset(token)

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Count the wall time inside: work done outside a task."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(time.perf_counter() - started)


def reports_work(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, adding the time each call takes to the clock counting where it is called."""

    @functools.wraps(fn)
    def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        clock = _counting.get()
        if clock is None:
            return fn(*args, **kwargs)
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(time.perf_counter() - started)

    return timed
