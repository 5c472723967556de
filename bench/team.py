"""48 month files dropped at once, in one run, on the embedded SQLite `taxiops up` and on
team mode (PostgreSQL, `taxiops server`, 2 process workers, `taxiops watch`).

Side 1 is `taxiops up` as users start it (its defaults: serve limit 2, the MLflow UI).
Side 2 is the README's "Team mode" recipe as tests/team.py brings it up: Debian's
PostgreSQL, `taxiops server` with basic auth, `prefect deploy --all`, two
`prefect worker start --limit 1` workers, so 2 runs at once on both sides. With root and
iproute2, each role of side 2 runs on a host of its own (a network namespace on a veth
bridge: tests/netns.py) and PostgreSQL on this process's host; `--loopback`, or without
them, everything listens on 127.0.0.1.

The same 48 files (24 green and 24 yellow months, 2019-01 .. 2020-12, 2,000 synthetic
trips each) are renamed into each side's incoming folder at once. Printed for each: wall
time from the drop to the last run's end, runs, duplicates, lost files, hand-off 503s
(the watcher's failed hand-off attempts answered 503), runs per worker, and peak RSS and
PSS of the server processes (sampled every 0.25 s).

Targets: 0 duplicates and 0 lost on both; 0 hand-off 503s on PostgreSQL.
Run: .venv/bin/python bench/team.py [--loopback]   (needs `make install`, Debian's postgresql)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import count_handoff_503s, epoch, keep_prefect_local, taxiops_up
from taxiops.tripfile import TaxiType

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

TAXI_TYPES: tuple[TaxiType, ...] = ("green", "yellow")
MONTHS = [
    (taxi_type, f"{year}-{month:02d}")
    for taxi_type in TAXI_TYPES
    for year in (2019, 2020)
    for month in range(1, 13)
]
ROWS = 2_000
FINISH_TIMEOUT_SECONDS = 900.0
SAMPLE_SECONDS = 0.25


@dataclass
class Outcome:
    """What one side did with the burst."""

    label: str
    ready_seconds: float
    wall_seconds: float
    runs: dict[Path, list[FlowRun]]
    handoff_503s: int
    runs_per_worker: Counter[str]
    peak_rss: dict[str, int]  # "RSS what" / "PSS what" -> bytes

    @property
    def duplicates(self) -> int:
        return sum(max(len(found) - 1, 0) for found in self.runs.values())

    @property
    def lost(self) -> list[str]:
        return [path.name for path, found in self.runs.items() if not found]

    @property
    def states(self) -> Counter[str]:
        return Counter(
            (run.state.name or run.state.type.value) if run.state else "no state"
            for found in self.runs.values()
            for run in found
        )


@dataclass
class PeakRss:
    """The largest summed RSS, and PSS (shared pages split among their sharers, so forked
    workers are not counted twice), of each group of processes, sampled in a thread."""

    groups: dict[str, Callable[[], Iterable[int]]]
    peaks: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def sampling(self) -> Iterator[PeakRss]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(SAMPLE_SECONDS):
                for name, pids in self.groups.items():
                    found = set(pids())
                    for kind, read in (("RSS", _rss), ("PSS", _pss)):
                        total = sum(read(pid) for pid in found)
                        self.peaks[f"{kind} {name}"] = max(
                            self.peaks.get(f"{kind} {name}", 0), total
                        )

        thread = threading.Thread(target=sample, name="peak-rss", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def _rss(pid: int) -> int:
    return _kib(f"/proc/{pid}/status", "VmRSS:")


def _pss(pid: int) -> int:
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def _kib(path: str, key: str) -> int:
    """Bytes of the `key:  N kB` line of a /proc file (0 when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def with_tree(pids: Iterable[int]) -> list[int]:
    """`pids` and every process below them."""
    from tests.e2e.harness import descendants

    return [tree_pid for pid in pids for tree_pid in (pid, *descendants(pid))]


def stage(folder: Path) -> list[Path]:
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import Month

    return [
        write_synth_month(folder, taxi_type, Month.parse(month), rows=ROWS, seed=1_000 + i)
        for i, (taxi_type, month) in enumerate(MONTHS)
    ]


def drop(staged: list[Path], staging: Path, incoming: Path) -> tuple[list[Path], float]:
    """Copy the staged months beside `incoming`, then rename them all in at once."""
    copies = [Path(shutil.copy(path, staging / path.name)) for path in staged]
    started = time.time()
    return [path.rename(incoming / path.name) for path in copies], started


def wait_for_runs(api_url: str, files: list[Path]) -> dict[Path, list[FlowRun]]:
    """Every file's runs once each has a final one, looked at again a second later (a
    late duplicate shows by then)."""
    from tests.e2e.harness import runs_by_file, wait_until_finished

    wait_until_finished(api_url, files, FINISH_TIMEOUT_SECONDS)
    time.sleep(1.0)
    return runs_by_file(api_url, files)


def wall(started: float, runs: dict[Path, list[FlowRun]]) -> float:
    ends = [end for found in runs.values() for run in found if (end := epoch(run.end_time))]
    return max(ends, default=time.time()) - started


def run_embedded(staged: list[Path]) -> Outcome:
    from tests.e2e.harness import processes_below, server_processes

    with taxiops_up() as up:
        rss = PeakRss(
            {
                "Prefect server": lambda: with_tree(server_processes(up.process.pid)),
                "MLflow server": lambda: with_tree(
                    processes_below(up.process.pid, "mlflow", "server")
                ),
            }
        )
        with rss.sampling():
            files, started = drop(staged, up.staging, up.incoming)
            runs = wait_for_runs(up.api_url, files)
        return Outcome(
            label="embedded SQLite `taxiops up`",
            ready_seconds=up.ready_seconds,
            wall_seconds=wall(started, runs),
            runs=runs,
            handoff_503s=count_handoff_503s(up.log_path.read_text(errors="replace")),
            runs_per_worker=Counter({"taxiops up": sum(len(found) for found in runs.values())}),
            peak_rss=rss.peaks,
        )


def run_team(staged: list[Path], *, loopback: bool) -> Outcome:
    from tests.e2e.harness import processes_below
    from tests.netns import Lan, can_make_namespaces
    from tests.team import hosts, running_team

    why_not = "--loopback" if loopback else can_make_namespaces()
    root = Path(tempfile.mkdtemp(prefix="taxiops-bench-team-"))
    with ExitStack() as stack:
        lan = None if why_not else stack.enter_context(Lan.temporary(hosts(2)))
        where = f"loopback ({why_not})" if why_not else "a host each (network namespaces)"
        began = time.monotonic()
        team = stack.enter_context(running_team(root, workers=2, lan=lan))
        ready = time.monotonic() - began
        server = team.server.pid
        rss = PeakRss(
            {
                "Prefect server": lambda: with_tree(processes_below(server, "prefect", "server")),
                "MLflow server": lambda: with_tree(processes_below(server, "mlflow", "server")),
                "server role, all": lambda: with_tree([server]),
            }
        )
        with rss.sampling():
            files, started = drop(staged, team.watcher_site.staging, team.watcher_site.incoming)
            runs = wait_for_runs(team.api_url, files)
        by_worker = team.worker_of_runs()
        outcome = Outcome(
            label=f"team: PostgreSQL, 2 workers, {where}",
            ready_seconds=ready,
            wall_seconds=wall(started, runs),
            runs=runs,
            handoff_503s=count_handoff_503s(team.watcher.log(all_runs=True)),
            runs_per_worker=Counter(
                by_worker.get(str(run.id), "unknown") for found in runs.values() for run in found
            ),
            peak_rss=rss.peaks,
        )
    shutil.rmtree(root, ignore_errors=True)
    return outcome


def report(outcomes: list[Outcome]) -> bool:
    """Print the sides next to each other; True when a target is missed."""

    def row(what: str, cells: list[str]) -> None:
        print(f"  {what:<28}" + "".join(f"{cell:<44}" for cell in cells))

    def mib(value: int | None) -> str:
        return "-" if not value else f"{value / 2**20:,.0f} MiB"

    print(f"{len(MONTHS)} files at once ({ROWS:,} trips each: 24 green + 24 yellow months)")
    row("", [outcome.label for outcome in outcomes])
    row("ready in", [f"{o.ready_seconds:.1f} s" for o in outcomes])
    row("wall, drop -> last run end", [f"{o.wall_seconds:.1f} s" for o in outcomes])
    row("runs", [f"{sum(len(f) for f in o.runs.values())}" for o in outcomes])
    row("final states", [", ".join(f"{k} {v}" for k, v in o.states.items()) for o in outcomes])
    row("duplicates (must be 0)", [str(o.duplicates) for o in outcomes])
    row("lost (must be 0)", [f"{len(o.lost)} {' '.join(o.lost)}" for o in outcomes])
    row("hand-off 503s", [str(o.handoff_503s) for o in outcomes])
    row(
        "runs per worker",
        [", ".join(f"{k} {v}" for k, v in sorted(o.runs_per_worker.items())) for o in outcomes],
    )
    for kind in ("RSS", "PSS"):
        for what in ("Prefect server", "MLflow server", "server role, all"):
            row(f"peak {kind}: {what}", [mib(o.peak_rss.get(f"{kind} {what}")) for o in outcomes])
    embedded, team = outcomes
    missed = [
        f"{o.label}: {why}"
        for o in outcomes
        for why, bad in (
            ("duplicates", o.duplicates > 0),
            ("lost files", bool(o.lost)),
            ("runs not Completed", o.states["Completed"] != len(MONTHS)),
        )
        if bad
    ]
    if team.handoff_503s:
        missed.append(f"{team.label}: {team.handoff_503s} hand-off 503s")
    if len([w for w in team.runs_per_worker if w != "unknown"]) < 2:
        missed.append(f"{team.label}: a worker ran nothing")
    if embedded.wall_seconds and team.wall_seconds:
        print(f"  team wall / embedded wall:  {team.wall_seconds / embedded.wall_seconds:.2f}")
    for line in missed:
        print(f"MISSED {line}")
    return bool(missed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loopback", action="store_true", help="team mode on 127.0.0.1 only")
    args = parser.parse_args()
    keep_prefect_local()
    staging = Path(tempfile.mkdtemp(prefix="taxiops-bench-months-"))
    try:
        staged = stage(staging)
        embedded = run_embedded(staged)
        print(f"(embedded side done: {embedded.wall_seconds:.1f} s)", file=sys.stderr, flush=True)
        outcomes = [embedded, run_team(staged, loopback=args.loopback)]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    missed = report(outcomes)
    print("FAIL" if missed else "OK")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
