"""Issue 14's goals in one run: the two clocks against the course, a 3M-row month, cached
re-runs as users meet them, drop -> Running and drop -> alert.

Three cases: the real green pairs of ../shared/data (2021-01 -> 02, 2023-01 -> 02), and a
3,000,000-row month bootstrapped from green 2021-01 (bench/peak_memory.py's generator)
validated on the real 2021-02.

- The course method: bench/train_vs_course.py's child, a fresh process per run.
- Ours: `taxiops train NEW --train TRAIN --json`, a fresh process per run, against a
  throwaway embedded Prefect server (SQLite) with a TAXIOPS_HOME of its own per cold run
  (its own MLflow store and task caches), then the same command again on that home: the
  cached re-run. Each home first trains two small synthetic months of the same taxi type,
  as a user's install has by the time a new month lands: the MLflow store exists and the
  registry has a champion, so the cold run is a new month, not the first run ever. Read
  from the JSON: `seconds` (the flow) and `pipeline_seconds` (reading the files and the
  time inside the load, train and evaluate tasks: the course clock's scope); from the
  server: the train task's time; from wait4: the process's peak RSS. This process
  imports pandas, XGBoost and MLflow inside its flow, so its overhead is printed, not
  judged.
- bench/watch_latency.py's drops into `taxiops up` alerting a local Slack inbox: the
  runs as the service starts them (forked warm), whose overhead is judged.

Every figure is printed as min / median / max of its runs; goals are judged on the
median, and the worst is printed beside it. Exits 1 when a goal is missed.
Run: .venv/bin/python bench/fast.py [--repeat 3] [--course-repeat 1] [--drops 20]
     (~15 min; the course method on 3M rows is most of it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peak_memory, watch_latency
from bench._common import SHARED_DATA, keep_prefect_local, spread, task_seconds
from bench.train_vs_course import PAIRS

BENCH = Path(__file__).resolve().parent
ROWS_3M = 3_000_000
MIN_PIPELINE_SPEEDUP = 20.0
MAX_TRAIN_SECONDS_3M = 12.0
MAX_RSS_3M = 1.5 * 2**30
MIN_CACHE_RATIO = {"green": 3.0, "3M": 5.0}


@dataclass(frozen=True)
class Case:
    label: str
    kind: str  # "green" or "3M"
    train: Path
    valid: Path


@dataclass(frozen=True)
class Trained:
    """One `taxiops train --json` process."""

    summary: dict[str, Any]
    wall_seconds: float
    peak_rss: int  # bytes
    task_seconds: dict[str, float]  # task name (without Prefect's suffix) -> run time

    @property
    def train_task_seconds(self) -> float | None:
        return self.task_seconds.get("train-challenger")

    @property
    def seconds(self) -> float:
        return float(self.summary["seconds"])

    @property
    def pipeline_seconds(self) -> float:
        return float(self.summary["pipeline_seconds"])


def course(case: Case) -> dict[str, Any]:
    """The course's method in a fresh process."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "train_vs_course.py"), "--child", "course"]
        + [str(case.train), str(case.valid)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"the course method failed on {case.label}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def taxiops_train(case: Case, home: Path, api_url: str) -> Trained:
    """`python -m taxiops train` in a fresh process on `home`, cwd there (no `.env`)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TAXIOPS_", "SLACK_", "MLFLOW_"))
    }
    env.update(TAXIOPS_HOME=str(home), PREFECT_API_URL=api_url, DO_NOT_TRACK="1")
    command = [sys.executable, "-m", "taxiops", "train", str(case.valid)]
    command += ["--train", str(case.train), "--json"]
    out = home / "train.out"
    started = time.perf_counter()
    with out.open("wb") as stdout:
        process = subprocess.Popen(command, cwd=home, env=env, stdout=stdout, stderr=stdout)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = out.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        sys.exit(f"taxiops train failed on {case.label}:\n{text[-3000:]}")
    summary = json.loads(lines[-1])
    return Trained(
        summary=summary,
        wall_seconds=wall,
        peak_rss=usage.ru_maxrss * 1024,  # KiB on Linux
        task_seconds=task_seconds(api_url, summary.get("flow_run_id")),
    )


def slowest(trained: Trained, count: int = 6) -> str:
    ranked = sorted(trained.task_seconds.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in ranked)


@contextmanager
def embedded_server(root: Path) -> Iterator[str]:
    """A throwaway local Prefect server on SQLite; yields its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taxiops.app.server import LocalPrefectServer, free_port

    server = LocalPrefectServer(state_dir=root / "server", port=free_port())
    server.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        server.stop()


def cases(root: Path) -> list[Case]:
    green = [
        Case(
            f"green {a} -> {b[-2:]}",
            "green",
            SHARED_DATA / f"green_tripdata_{a}.parquet",
            SHARED_DATA / f"green_tripdata_{b}.parquet",
        )
        for a, b in PAIRS
    ]
    big = root / "3M" / "green_tripdata_2021-01.parquet"  # pickups stay in their month
    big.parent.mkdir()
    made = peak_memory.in_fresh_process("make", str(green[0].train), str(big), str(ROWS_3M))
    print(f"made {big.name} with {made['rows']:,} rows ({made['bytes'] / 2**20:.0f} MiB)")
    return [*green, Case("3M rows (2021-01 resampled) -> 2021-02", "3M", big, green[0].valid)]


def priming_case(root: Path) -> Case:
    """Two small synthetic green months from before the real ones."""
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import Month

    folder = root / "priming"
    train, valid = (
        write_synth_month(folder, "green", Month(2019, m), rows=20_000, seed=m) for m in (1, 2)
    )
    return Case("priming", "green", train, valid)


def measure_case(
    case: Case, root: Path, api_url: str, priming: Case, args: argparse.Namespace
) -> list[str]:
    """Print one case's figures; return the goals it missed."""
    courses = [course(case) for _ in range(args.course_repeat)]
    cold: list[Trained] = []
    cached: list[Trained] = []
    for n in range(args.repeat):
        home = root / f"{case.kind}-{case.train.stem}-{n}"
        home.mkdir()
        taxiops_train(priming, home, api_url)
        cold.append(taxiops_train(case, home, api_url))
        cached.append(taxiops_train(case, home, api_url))

    course_seconds = statistics.median(c["seconds"] for c in courses)
    pipeline = [t.pipeline_seconds for t in cold]
    overhead = [t.seconds - t.pipeline_seconds for t in cold]
    speedup = course_seconds / statistics.median(pipeline)
    course_rmse = courses[0]["rmse"]
    ours_rmse = max(t.summary["rmse"] for t in cold)
    cache_ratio = statistics.median(t.seconds for t in cold) / statistics.median(
        t.seconds for t in cached
    )
    train_times = [t.train_task_seconds for t in cold if t.train_task_seconds is not None]
    print(f"\n== {case.label}: {cold[0].summary['train_rows']:,} training rows ==")
    print(f"  course method, seconds         {spread([c['seconds'] for c in courses])}")
    print(f"  ours, pipeline_seconds (cold)  {spread(pipeline)}")
    print(f"  ours, seconds (cold flow)      {spread([t.seconds for t in cold])}")
    print(f"  flow overhead (cold process)   {spread(overhead)}  (not judged: imports inside)")
    print(f"  train task (server's clock)    {spread(train_times)}")
    print(f"  cached re-run, seconds         {spread([t.seconds for t in cached])}")
    print(f"  slowest tasks, first cold run  {slowest(cold[0])}")
    print(f"  slowest tasks, first re-run    {slowest(cached[0])}")
    cached_tasks = {f"{t.summary['cached_tasks']}/{t.summary['total_tasks']}" for t in cached}
    print(f"  tasks from cache on re-runs    {', '.join(sorted(cached_tasks))}")
    print(f"  process wall, cold             {spread([t.wall_seconds for t in cold])}")
    print(f"  process wall, cached           {spread([t.wall_seconds for t in cached])}")
    rss = [t.peak_rss / 2**30 for t in cold]
    print(f"  peak RSS of the cold process   {spread(rss, 'GiB')}")
    print(f"  RMSE: course {course_rmse:.3f}, ours {ours_rmse:.3f}")
    print(
        f"  ratios (medians): course / pipeline_seconds x{speedup:.1f}, "
        f"cold / cached x{cache_ratio:.1f}"
    )

    missed = []
    if speedup < MIN_PIPELINE_SPEEDUP:
        missed.append(f"{case.label}: pipeline x{speedup:.1f} < x{MIN_PIPELINE_SPEEDUP:.0f}")
    if ours_rmse > course_rmse:
        missed.append(f"{case.label}: RMSE {ours_rmse:.3f} > course {course_rmse:.3f}")
    if cache_ratio < MIN_CACHE_RATIO[case.kind]:
        missed.append(
            f"{case.label}: cached x{cache_ratio:.1f} < x{MIN_CACHE_RATIO[case.kind]:.0f}"
        )
    if case.kind == "3M":
        if not train_times or statistics.median(train_times) > MAX_TRAIN_SECONDS_3M:
            missed.append(f"{case.label}: train {spread(train_times)} > {MAX_TRAIN_SECONDS_3M} s")
        if max(t.peak_rss for t in cold) > MAX_RSS_3M:
            missed.append(f"{case.label}: peak RSS {max(rss):.2f} GiB > 1.5 GiB")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="cold + cached runs of ours")
    parser.add_argument("--course-repeat", type=int, default=1, help="runs of the course method")
    parser.add_argument("--drops", type=int, default=20, help="drops into `taxiops up`")
    args = parser.parse_args()
    keep_prefect_local()
    needed = [SHARED_DATA / f"green_tripdata_{m}.parquet" for pair in PAIRS for m in pair]
    if not all(path.is_file() for path in needed):
        print(f"SKIPPED: real TLC months not found in {SHARED_DATA} (set TAXIOPS_SHARED_DATA)")
        return 0
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"figures are min / median / max"
    )
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="taxiops-bench-fast-") as folder:
        root = Path(folder)
        with embedded_server(root) as api_url:
            priming = priming_case(root)
            for case in cases(root):
                missed += measure_case(case, root, api_url, priming, args)
    print(f"\n== {args.drops} drops into `taxiops up`, one at a time ==")
    missed += watch_latency.report(watch_latency.measure(args.drops))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    for line in missed:
        print(f"MISSED {line}")
    print("FAIL" if missed else "OK")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
