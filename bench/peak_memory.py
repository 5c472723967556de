"""Peak memory of our pipeline on a 3,000,000-row month.

    .venv/bin/python bench/peak_memory.py [--rows 3000000]

A real green month is bootstrap-resampled to `--rows` rows and written to a
temporary parquet file (in one child process). A second, fresh child then runs
load_trips + train_model on it and evaluates on the next real month; it reports
its own peak resident set size (getrusage ru_maxrss), which includes
everything: Python, pandas, pyarrow, XGBoost. Exits 1 over 3 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LIMIT_MIB = 3 * 1024
SOURCE = "green_tripdata_2021-01.parquet"
VALIDATION = "green_tripdata_2021-02.parquet"


def shared_data_dir() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench._common import SHARED_DATA

    return SHARED_DATA


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_month(source: Path, target: Path, rows: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from taxiops.ml import resample_month

    started = time.perf_counter()
    frame = resample_month(source, rows=rows, seed=0)
    schema = pq.read_schema(source).remove_metadata()
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), target)
    return {
        "rows": len(frame),
        "seconds": time.perf_counter() - started,
        "bytes": target.stat().st_size,
        "peak_rss_mib": peak_rss_mib(),
    }


def train_on(month_file: Path, validation_file: Path) -> dict[str, Any]:
    baseline = peak_rss_mib()
    from taxiops.ml import evaluate, load_trips, train_model
    from taxiops.tripfile import parse_trip_file

    imported_rss = peak_rss_mib()
    started = time.perf_counter()
    trips = load_trips(parse_trip_file(month_file))
    loaded = time.perf_counter()
    loaded_rss = peak_rss_mib()
    model = train_model([trips.frame])
    trained = time.perf_counter()
    trained_rss = peak_rss_mib()
    metrics = evaluate(model, load_trips(parse_trip_file(validation_file)).frame)
    finished = time.perf_counter()
    return {
        "rows_read": trips.report.rows_read,
        "rows_kept": trips.report.rows_kept,
        "load_seconds": loaded - started,
        "train_seconds": trained - loaded,
        "evaluate_seconds": finished - trained,
        "seconds": finished - started,
        "rmse": metrics.rmse,
        "python_rss_mib": baseline,
        "imported_rss_mib": imported_rss,
        "loaded_rss_mib": loaded_rss,
        "trained_rss_mib": trained_rss,
        "peak_rss_mib": peak_rss_mib(),
    }


def in_fresh_process(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"child {args[0]} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, *paths = args.child
        if step == "make":
            result = make_month(Path(paths[0]), Path(paths[1]), int(paths[2]))
        else:
            result = train_on(Path(paths[0]), Path(paths[1]))
        print(json.dumps(result))
        return 0

    data = shared_data_dir()
    if not (data / SOURCE).is_file() or not (data / VALIDATION).is_file():
        print(f"SKIPPED: real TLC months not found in {data} (set TAXIOPS_SHARED_DATA)")
        return 0

    with tempfile.TemporaryDirectory(prefix="taxiops-bench-") as folder:
        month_file = Path(folder) / SOURCE  # same month as its source: pickups stay in the month
        made = in_fresh_process("make", str(data / SOURCE), str(month_file), str(args.rows))
        print(
            f"resampled {SOURCE} to {made['rows']:,} rows, {made['bytes'] / 2**20:.0f} MiB parquet, "
            f"in {made['seconds']:.1f}s (generator peak RSS {made['peak_rss_mib']:.0f} MiB)"
        )
        run = in_fresh_process("train", str(month_file), str(data / VALIDATION))

    print(f"rows read {run['rows_read']:,}, kept {run['rows_kept']:,}")
    print(
        f"seconds: load {run['load_seconds']:.1f}, train {run['train_seconds']:.1f}, "
        f"evaluate {run['evaluate_seconds']:.1f}, total {run['seconds']:.1f}"
    )
    print(
        f"RMSE on {VALIDATION}: {run['rmse']:.3f} (trained on ~40 copies of each 2021-01 trip; "
        "the 76k-row original scores ~5.39)"
    )
    print(
        f"peak RSS MiB: python {run['python_rss_mib']:.0f}, after imports "
        f"{run['imported_rss_mib']:.0f}, after load {run['loaded_rss_mib']:.0f}, "
        f"after train {run['trained_rss_mib']:.0f}, overall {run['peak_rss_mib']:.0f}"
    )
    ratio = run["peak_rss_mib"] / LIMIT_MIB
    print(f"peak RSS {run['peak_rss_mib']:.0f} MiB = {ratio:.0%} of the {LIMIT_MIB} MiB limit")
    if run["peak_rss_mib"] > LIMIT_MIB:
        print("TARGET MISSED: peak RSS over 3 GiB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
