"""A burst of 24 month files copied in at once: each trains exactly once, none is lost;
then the same bytes under 24 new names train not at all.

`taxiops up` runs as a child process on temp state with its own Prefect server and the
default serve limit (2 runs at once). Phase 1 copies 24 distinct synthetic green months
(2021-01 .. 2022-12) into the folder with plain, non-atomic copies, as a user would, and
waits until every file has one finished flow run. Phase 2 copies the same 24 files' bytes
under the names of months ten years later, then one month of new bytes as a positive
control (proof that the watcher was still reading the folder), and checks that only the
control gets a run.

Target: 0 duplicates, 0 lost files, 0 runs for the re-named copies.
Run: .venv/bin/python bench/burst.py
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RunningTaxiops, epoch, keep_prefect_local, taxiops_up

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

FIRST_MONTH = "2021-01"
MONTHS = 24
ROWS = 2_000
RENAME_YEARS_LATER = 10
CONTROL_MONTH = "2023-01"  # the month after the burst's last: new bytes
FINISH_TIMEOUT_SECONDS = 480.0
CONTROL_TIMEOUT_SECONDS = 120.0
SETTLE_SECONDS = 10.0
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Snapshot:
    """The training runs on the server and the ledger rows, at one moment."""

    runs: list[FlowRun]
    ledger_states: dict[str, str]  # path -> state

    def runs_for(self, path: Path) -> list[FlowRun]:
        return [r for r in self.runs if r.parameters.get("new_file") == str(path)]

    @property
    def all_final(self) -> bool:
        return all(r.state is not None and r.state.is_final() for r in self.runs)


def take_snapshot(up: RunningTaxiops, deployment_id: UUID) -> Snapshot:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=by_deployment)
    entries = up.ledger().entries()
    return Snapshot(runs=runs, ledger_states={str(e.path): e.state.value for e in entries})


def stage_months(up: RunningTaxiops) -> list[Path]:
    """The 24 months, written complete into the unwatched staging folder."""
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import Month

    first = Month.parse(FIRST_MONTH)
    return [
        write_synth_month(up.staging, "green", first.shift(offset), rows=ROWS)
        for offset in range(MONTHS)
    ]


def renamed(path: Path) -> str:
    """The name of the month `RENAME_YEARS_LATER` years after `path`'s."""
    from taxiops.tripfile import file_name_for, parse_trip_file

    trip = parse_trip_file(path)
    return file_name_for(trip.taxi_type, trip.month.shift(12 * RENAME_YEARS_LATER))


def read_histories(runs: list[FlowRun]) -> tuple[dict[UUID, float], int]:
    """When the runner took each run (its first Pending state), and how many runs the
    server marked Late while they waited for a slot."""
    from prefect.client.orchestration import get_client

    taken = {}
    late = 0
    with get_client(sync_client=True) as client:
        for run in runs:
            states = client.read_flow_run_states(run.id)
            pending = [s.timestamp for s in states if s.type.value == "PENDING"]
            if pending:
                taken[run.id] = min(pending).timestamp()
            late += any(s.name == "Late" for s in states)
    return taken, late


def peak_overlap(intervals: list[tuple[float | None, float | None]]) -> int:
    """Most intervals open at the same moment."""
    edges = []
    for start, end in intervals:
        if start is not None and end is not None:
            edges += [(start, 1), (end, -1)]
    peak = open_now = 0
    for _, step in sorted(edges):  # an end before a start at the same instant
        open_now += step
        peak = max(peak, open_now)
    return peak


def phase_burst(up: RunningTaxiops, staged: list[Path], deployment_id: UUID) -> bool:
    started = time.time()
    for path in staged:
        shutil.copyfile(path, up.incoming / path.name)
    copied = time.time() - started
    targets = [up.incoming / path.name for path in staged]

    deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
    while True:
        snap = take_snapshot(up, deployment_id)
        every_file_ran = all(snap.runs_for(t) for t in targets)
        ledger_done = all(
            snap.ledger_states.get(str(t)) in ("succeeded", "failed", "rejected") for t in targets
        )
        if (every_file_ran and snap.all_final and ledger_done) or time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    timed_out = not (every_file_ran and snap.all_final and ledger_done)

    runs = snap.runs
    distinct = {r.parameters.get("new_file") for r in runs}
    lost = [t.name for t in targets if not snap.runs_for(t) or str(t) not in snap.ledger_states]
    duplicates = len(runs) - len(distinct)
    states = Counter(_state_name(r) for r in runs)
    created = [c for r in runs if (c := epoch(r.created)) is not None]
    ended = [e for r in runs if (e := epoch(r.end_time)) is not None]
    durations = [r.total_run_time.total_seconds() for r in runs]
    print(
        f"phase 1: {len(staged)} new months copied in at once "
        f"(plain copies, {ROWS:,} rows each), serve limit 2"
    )
    print(f"  copied in               {copied:6.2f} s")
    print(f"  flow runs created       {len(runs):6d}    (expected {len(staged)})")
    print(f"  distinct files          {len(distinct):6d}")
    print(f"  duplicates              {duplicates:6d}    (must be 0)")
    print(f"  lost                    {len(lost):6d}    (must be 0) {' '.join(lost)}")
    print(f"  final states            {_counts(states)}")
    print(f"  ledger                  {_counts(Counter(snap.ledger_states.values()))}")
    if created:
        print(f"  all submitted after     {max(created) - started:6.2f} s")
    if ended:
        taken, late = read_histories(runs)
        running = peak_overlap([(epoch(r.start_time), epoch(r.end_time)) for r in runs])
        in_flight = peak_overlap([(taken.get(r.id), epoch(r.end_time)) for r in runs])
        starting = [s - p for r in runs if (s := epoch(r.start_time)) and (p := taken.get(r.id))]
        print(f"  all finished after      {max(ended) - started:6.2f} s")
        print(
            f"  per run                 Pending -> Running mean "
            f"{sum(starting) / max(len(starting), 1):.2f} s, Running -> end mean "
            f"{sum(durations) / len(durations):.2f} s"
        )
        print(
            f"  at once (limit 2)       peak {in_flight} taken by the runner (Pending..end), "
            f"peak {running} Running; {late} runs marked Late while queued"
        )
    if timed_out:
        print(f"  TIMED OUT after {FINISH_TIMEOUT_SECONDS:.0f} s")
    return timed_out or duplicates > 0 or bool(lost) or states["Completed"] != len(staged)


def phase_renamed_copies(up: RunningTaxiops, staged: list[Path], deployment_id: UUID) -> bool:
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import Month

    before = take_snapshot(up, deployment_id)
    control_dir = up.staging / "control"
    control = write_synth_month(control_dir, "green", Month.parse(CONTROL_MONTH), rows=ROWS)
    copies = [up.incoming / renamed(path) for path in staged]
    for path, copy in zip(staged, copies, strict=True):
        shutil.copyfile(path, copy)
    control_target = up.incoming / control.name
    shutil.copyfile(control, control_target)  # last, so the watcher checks it last

    deadline = time.monotonic() + CONTROL_TIMEOUT_SECONDS
    snap = before
    while not snap.runs_for(control_target) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        snap = take_snapshot(up, deployment_id)
    control_seen = bool(snap.runs_for(control_target))
    time.sleep(SETTLE_SECONDS)
    snap = take_snapshot(up, deployment_id)
    while not snap.all_final and time.monotonic() < deadline:  # let the control finish
        time.sleep(POLL_SECONDS)
        snap = take_snapshot(up, deployment_id)

    old_ids = {r.id for r in before.runs}
    new_runs = [r for r in snap.runs if r.id not in old_ids]
    copy_runs = [r for r in new_runs if r.parameters.get("new_file") in {str(c) for c in copies}]
    control_runs = snap.runs_for(control_target)
    control_state = ", ".join(_state_name(r) for r in control_runs)
    first, last = copies[0].name, copies[-1].name
    print(
        f"phase 2: the same {len(copies)} files' bytes under new names "
        f"({first} .. {last}), then {control.name} (new bytes) as a control"
    )
    print(f"  new runs for the copies {len(copy_runs):6d}    (must be 0)")
    print(f"  new runs for control    {len(control_runs):6d}    (must be 1) {control_state}")
    print(f"  other new runs          {len(new_runs) - len(copy_runs) - len(control_runs):6d}")
    print(
        f"  ledger rows             {len(snap.ledger_states):6d}    "
        f"(was {len(before.ledger_states)}; waited {SETTLE_SECONDS:.0f} s after the control's run)"
    )
    return bool(copy_runs) or len(new_runs) != 1 or len(control_runs) != 1 or not control_seen


def _state_name(run: FlowRun) -> str:
    return "no state" if run.state is None else run.state.name or run.state.type.value


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "-"


def main() -> int:
    keep_prefect_local()
    from prefect.client.orchestration import get_client

    from taxiops.names import TRAIN_DEPLOYMENT_FULL

    with taxiops_up() as up:
        print(f"`taxiops up` ready in {up.ready_seconds:.1f} s (server {up.api_url})")
        staged = stage_months(up)
        with get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name(TRAIN_DEPLOYMENT_FULL).id
        failed = phase_burst(up, staged, deployment_id)
        failed |= phase_renamed_copies(up, staged, deployment_id)
        print(up.log_summary())
        if failed:
            print(up.log_tail(), file=sys.stderr)
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
