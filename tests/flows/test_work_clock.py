"""`pipeline_seconds`' clock counts the time inside the tasks it is told to count, in the
flow's thread and in Prefect's task threads alike, and nothing else."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from taxiops.pipeline.clock import WorkClock
from taxiops.pipeline.tasks import taxiops_task

NAP = 0.2


@taxiops_task("nap", cache=False)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def three_naps_counted_one_not(clock: WorkClock) -> None:
    with clock.counting():
        nap(NAP)  # in the flow's thread
        for future in [nap.submit(NAP), nap.submit(NAP)]:  # in task threads, at once
            future.wait()
    nap(3 * NAP)  # not counted
    with clock.timing():
        time.sleep(NAP / 2)  # work outside a task


def test_counts_called_and_submitted_tasks_and_timed_work_only(prefect_server: Any) -> None:
    clock = WorkClock()
    started = time.perf_counter()
    three_naps_counted_one_not(clock)
    wall = time.perf_counter() - started
    # The two submitted naps overlap: the clock adds both, as `pipeline_seconds` does.
    assert 3.5 * NAP <= clock.seconds < 6 * NAP, clock.seconds
    assert wall > clock.seconds + 3 * NAP


def test_a_task_called_outside_a_counting_block_counts_nowhere(prefect_server: Any) -> None:
    clock = WorkClock()
    with clock.counting():
        pass
    assert nap.fn(0.01) == 0.01
    assert clock.seconds == 0.0
