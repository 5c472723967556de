"""From a complete month file landing in the incoming folder to its training run `Running`.

`taxiops up` runs as a child process on temp state with its own Prefect server; each
month is written beside the folder, then renamed in (atomic, so it lands complete).
One drop at a time: each run finishes before the next file lands, so nothing queues.
Latency is the run's `start_time` (set by the server on entering Running) minus the
wall-clock time just before the rename.

Targets (issue 14), over 20 drops: median <= 1.5 s, p95 <= 2.0 s, no hand-off 503s.
Run: .venv/bin/python bench/watch_latency.py [--drops 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RunningTaxiops, epoch, keep_prefect_local, real_month, taxiops_up

if TYPE_CHECKING:
    from taxiops.tripfile import TaxiType

# Four real months (each trained on the real month before it, or on its own first days)
# and a synthetic yellow month: five distinct files whose pickups fall in their named month.
REAL_DROPS = [
    "green_tripdata_2021-01.parquet",
    "green_tripdata_2021-02.parquet",
    "green_tripdata_2023-01.parquet",
    "green_tripdata_2023-02.parquet",
]
SYNTH_DROP: tuple[TaxiType, str, int] = ("yellow", "2021-01", 20_000)
EXTRA_SYNTH_ROWS = 20_000  # green months from 2019-01 on (no name above), after the five
TARGET_MEDIAN_SECONDS = 1.5
TARGET_P95_SECONDS = 2.0
RUN_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.05
# Default poll / check interval of other ways to start work when a file appears.
CONTEXT_SECONDS = [
    ("Prefect runner default poll (PREFECT_RUNNER_POLL_FREQUENCY)", 10.0),
    ("Dagster sensor default interval", 30.0),
    ("Airflow FileSensor default poke_interval", 60.0),
]


@dataclass(frozen=True)
class Drop:
    """One file's way from the rename to Running, as wall-clock seconds since the epoch."""

    name: str
    landed: float  # just before the rename
    seen: float | None  # ledger: complete, hashed, recorded by the watcher
    created: float | None  # server: flow run created (Scheduled)
    pending: float | None  # server: the runner picked it up
    running: float | None  # server: start_time, the engine in the run's process began
    first_observed_running: float | None  # this script saw Running / a final state
    finished: float | None
    final_state: str

    @property
    def latency(self) -> float | None:
        return None if self.running is None else self.running - self.landed


def stage(up: RunningTaxiops, drops: int) -> list[Path]:
    """`drops` months, complete, in the unwatched staging folder (same filesystem): the five
    above, then synthetic green months from 2019-01 on."""
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import Month

    staged = []
    for name in REAL_DROPS:
        staged.append(Path(shutil.copyfile(real_month(name), up.staging / name)))
    taxi_type, month, rows = SYNTH_DROP
    staged.append(write_synth_month(up.staging, taxi_type, Month.parse(month), rows=rows))
    for n in range(max(drops - len(staged), 0)):
        extra = Month(2019 + n // 12, n % 12 + 1)
        staged.append(write_synth_month(up.staging, "green", extra, rows=EXTRA_SYNTH_ROWS, seed=n))
    return staged[:drops]


def drop(up: RunningTaxiops, staged: Path, deployment_id: UUID) -> Drop:
    """Rename `staged` into the folder and follow its flow run until it ends."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from taxiops.tripfile import sha256_of

    target = up.incoming / staged.name
    sha256 = sha256_of(staged)
    by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    landed = time.time()
    os.rename(staged, target)
    observed_running = None
    run = None
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if run is None:
                run = next(
                    (
                        r
                        for r in client.read_flow_runs(deployment_filter=by_deployment)
                        if r.parameters.get("new_file") == str(target)
                    ),
                    None,
                )
            else:
                run = client.read_flow_run(run.id)
            state = None if run is None else run.state
            if state is None:
                time.sleep(POLL_SECONDS)
                continue
            if observed_running is None and (state.is_running() or state.is_final()):
                observed_running = time.time()
            if state.is_final():
                break
            time.sleep(POLL_SECONDS)
        states = [] if run is None else client.read_flow_run_states(run.id)
    entry = up.ledger().get(sha256)

    def first(kind: str) -> float | None:
        return next((s.timestamp.timestamp() for s in states if s.type.value == kind), None)

    return Drop(
        name=target.name,
        landed=landed,
        seen=None if entry is None else entry.seen_at.timestamp(),
        created=None if run is None else epoch(run.created),
        pending=first("PENDING"),
        running=None if run is None else epoch(run.start_time),
        first_observed_running=observed_running,
        finished=None if run is None else epoch(run.end_time),
        final_state="no flow run" if run is None or run.state is None else str(run.state.name),
    )


def _gap(later: float | None, earlier: float | None) -> str:
    return "      -" if later is None or earlier is None else f"{later - earlier:7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=20, help="Files dropped, one at a time.")
    args = parser.parse_args()
    keep_prefect_local()
    from prefect.client.orchestration import get_client

    from taxiops.names import TRAIN_DEPLOYMENT_FULL

    with taxiops_up() as up:
        print(f"`taxiops up` ready in {up.ready_seconds:.1f} s (server {up.api_url})")
        staged = stage(up, args.drops)
        with get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name(TRAIN_DEPLOYMENT_FULL).id
        drops = [drop(up, path, deployment_id) for path in staged]
        log_summary = up.log_summary()
        handoff_503s = sum(
            "hand-off attempt" in line and "503" in line
            for line in up.log_path.read_text(errors="replace").splitlines()
        )
        if any(d.running is None for d in drops):
            print(up.log_tail(), file=sys.stderr)

    print()
    print("seconds from the rename into the folder (t0):")
    print(
        f"  {'file':<32} {'detect':>7} {'hand-off':>8} {'pick-up':>7} {'start':>7} "
        f"{'LATENCY':>7} {'polled':>7} {'run':>6}  final"
    )
    for d in drops:
        latency = "      -" if d.latency is None else f"{d.latency:7.2f}"
        print(
            f"  {d.name:<32} {_gap(d.seen, d.landed)} {_gap(d.created, d.seen):>8} "
            f"{_gap(d.pending, d.created)} {_gap(d.running, d.pending)} {latency} "
            f"{_gap(d.first_observed_running, d.landed)} {_gap(d.finished, d.running):>6}  "
            f"{d.final_state}"
        )
    print(
        "  detect   = rename -> ledger `seen` (inotify, 0.1 s debounce, "
        "TAXIOPS_WATCH_SETTLE_SECONDS, footer check, SHA-256)\n"
        "  hand-off = `seen` -> flow run created on the server\n"
        "  pick-up  = created -> Pending (the watcher wakes the runner after the hand-off)\n"
        "  start    = Pending -> Running (`python -m prefect.engine` process starts, "
        "loads the flow)\n"
        "  polled   = when this script (polling every 50 ms) first saw Running or later\n"
        "  run      = Running -> final state"
    )

    latencies = [d.latency for d in drops if d.latency is not None]
    failed = len(latencies) < len(drops) or any(d.final_state != "Completed" for d in drops)
    median = statistics.median(latencies) if latencies else float("inf")
    p95 = statistics.quantiles(latencies, n=20)[18] if len(latencies) > 1 else float("inf")
    print()
    print(
        f"median latency {median:.2f} s over {len(latencies)}/{len(drops)} drops "
        f"(min {min(latencies, default=float('nan')):.2f}, "
        f"p95 {p95:.2f}, max {max(latencies, default=float('nan')):.2f}); "
        f"targets: median <= {TARGET_MEDIAN_SECONDS:.1f} s, p95 <= {TARGET_P95_SECONDS:.1f} s"
    )
    print(f"hand-off attempts answered 503: {handoff_503s} (target 0)")
    for part in ("detect", "hand-off", "pick-up", "start"):
        values = [v for d in drops if (v := _part(d, part)) is not None]
        if values:
            print(f"  median {part:<8} {statistics.median(values):5.2f} s")
    print("for context, the default check interval of other ways to start on a new file:")
    for label, seconds in CONTEXT_SECONDS:
        print(f"  {label:<58} {seconds:5.0f} s  ({seconds / median:5.1f}x ours)")
    print(log_summary)
    failed |= median > TARGET_MEDIAN_SECONDS or p95 > TARGET_P95_SECONDS or handoff_503s > 0
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


def _part(d: Drop, part: str) -> float | None:
    later, earlier = {
        "detect": (d.seen, d.landed),
        "hand-off": (d.created, d.seen),
        "pick-up": (d.pending, d.created),
        "start": (d.running, d.pending),
    }[part]
    return None if later is None or earlier is None else later - earlier


if __name__ == "__main__":
    sys.exit(main())
