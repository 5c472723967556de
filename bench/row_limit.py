"""Peak memory of the load step on a row bomb and on a month just under the row limit.

    .venv/bin/python bench/row_limit.py [--bomb-rows 200000000] [--rows N] [--train]

`bomb`: one real trip repeated `--bomb-rows` times (issue 11: 200 M copies, ~16 MB on
disk). `limit`: a real green month repeated to `--rows` rows (default: the row limit
minus one). Each file is written in one child process, one row group at a time; a
second, fresh child then does what a run does with it, reading the bytes once
(`MonthBytes.read`) and `load_trips` with the default `TAXIOPS_MAX_FILE_ROWS`, plus
`train_model` with `--train`, and reports its own peak RSS (getrusage ru_maxrss) and
time. The watcher's admission (`inspect_entry`) is timed on the bomb too.
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

SOURCE = "green_tripdata_2021-01.parquet"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write(source: Path, target: Path, rows: int, one_trip: bool) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from taxiops.ml import write_repeated

    started = time.perf_counter()
    table = pq.read_table(source)
    write_repeated(target, table.slice(0, 1) if one_trip else table, rows, rows_per_group=10**6)
    return {"rows": rows, "bytes": target.stat().st_size, "seconds": time.perf_counter() - started}


def load(path: Path, train: bool) -> dict[str, Any]:
    from taxiops.errors import DataValidationError
    from taxiops.ml import TrainingParams, load_trips, train_model
    from taxiops.pipeline.lineage import MonthBytes
    from taxiops.settings import Settings

    limit = Settings.model_fields["max_file_rows"].default
    started = time.perf_counter()
    result: dict[str, Any] = {"max_file_rows": limit}
    try:
        content = MonthBytes.read(path, max_bytes=Settings.model_fields["max_file_bytes"].default)
        trips = load_trips(content.file.trip, data=content.data, max_rows=limit)
        del content
        result |= {"rows_read": trips.report.rows_read, "rows_kept": trips.report.rows_kept}
        result["load_seconds"] = round(time.perf_counter() - started, 2)
        result["load_peak_rss_mib"] = round(peak_rss_mib())
        if train:
            model = train_model([trips.frame], TrainingParams())
            result["trained"] = type(model).__name__
    except DataValidationError as refused:
        result["refused"] = f"{refused.rule.value}: {refused.detail}"
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mib"] = round(peak_rss_mib())
    return result


def admit(path: Path) -> dict[str, Any]:
    from taxiops.intake import inspect_entry
    from taxiops.settings import Settings

    defaults = Settings.model_fields
    started = time.perf_counter()
    verdict = inspect_entry(
        path,
        path.parent,
        max_file_bytes=defaults["max_file_bytes"].default,
        max_file_rows=defaults["max_file_rows"].default,
    )
    return {
        "verdict": type(verdict).__name__,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def child(*args: str) -> dict[str, Any]:
    """Run this script's `--child` mode in a fresh interpreter and return its JSON."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-rows", type=int, default=200_000_000)
    parser.add_argument("--rows", type=int, default=None, help="default: the row limit - 1")
    parser.add_argument("--train", action="store_true", help="also train on the limit month")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.child:
        mode, *rest = args.child
        if mode == "write":
            out = write(Path(rest[0]), Path(rest[1]), int(rest[2]), rest[3] == "bomb")
        elif mode == "load":
            out = load(Path(rest[0]), rest[1] == "train")
        else:
            out = admit(Path(rest[0]))
        print(json.dumps(out))
        return

    from bench._common import real_month
    from taxiops.settings import Settings

    source = real_month(SOURCE)
    rows = args.rows or Settings.model_fields["max_file_rows"].default - 1
    with tempfile.TemporaryDirectory() as tmp:
        for kind, count in (("bomb", args.bomb_rows), ("limit", rows)):
            folder = Path(tmp) / kind
            folder.mkdir()
            path = folder / SOURCE
            made = child("write", str(source), str(path), str(count), kind)
            print(
                f"{kind}: wrote {made['rows']:,} rows, {made['bytes'] / 2**20:.1f} MiB "
                f"in {made['seconds']:.1f} s"
            )
            if kind == "bomb":
                seen = child("admit", str(path))
                print(
                    f"  watcher admission: {seen['verdict']} in {seen['seconds']} s, "
                    f"peak RSS {seen['peak_rss_mib']} MiB"
                )
            ran = child("load", str(path), "train" if args.train and kind == "limit" else "-")
            print(f"  run's load step: {json.dumps(ran)}")
            path.unlink()


if __name__ == "__main__":
    main()
