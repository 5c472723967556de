"""What the drift check costs: its task's share of the flow's time on a 3M-row month.

Two real green months (2021-01, 2021-02) are resampled to `--rows` rows each (default 3 M);
the training flow runs cold on them against a throwaway local Prefect server, `--runs`
times in fresh TAXIOPS_HOMEs. Printed: the flow's `seconds`, the `check-drift` task run's
time as the server recorded it, and its share. Target (issue 12): <= 5%.

Run: .venv/bin/python bench/drift_share.py [--rows 3000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import isolated_taxiops, real_month

SOURCES = ("green_tripdata_2021-01.parquet", "green_tripdata_2021-02.parquet")
TARGET_SHARE = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from flows.train import train_duration_model
    from prefect import get_client

    from taxiops.ml import resample_month

    big = Path(tempfile.mkdtemp(prefix="taxiops-drift-"))
    for seed, name in enumerate(SOURCES):
        resample_month(real_month(name), args.rows, seed=seed).to_parquet(big / name, index=False)
    shares, flows, drifts = [], [], []
    for number in range(1, args.runs + 1):
        with isolated_taxiops(list(SOURCES), source=big) as incoming:
            summary = train_duration_model(new_file=str(incoming / SOURCES[1]))
            with get_client(sync_client=True) as client:
                runs = client.read_task_runs()
            [drift] = [r for r in runs if r.name.startswith("check-drift")]
            seconds = drift.total_run_time.total_seconds()
        shares.append(seconds / summary.seconds)
        flows.append(summary.seconds)
        drifts.append(seconds)
        print(
            f"run {number}: flow {summary.seconds:.2f} s, check-drift {seconds:.3f} s "
            f"({seconds / summary.seconds:.1%}); drifted: {summary.drifted or 'none'}",
            flush=True,
        )
    shutil.rmtree(big, ignore_errors=True)
    worst = max(shares)
    print(
        f"drift_share rows={args.rows:,}: flow median {statistics.median(flows):.2f} s, "
        f"check-drift median {statistics.median(drifts):.3f} s (worst {max(drifts):.3f} s), "
        f"share median {statistics.median(shares):.1%}, worst {worst:.1%} "
        f"(target <= {TARGET_SHARE:.0%}): {'OK' if worst <= TARGET_SHARE else 'MISSED'}"
    )
    return 0 if worst <= TARGET_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
