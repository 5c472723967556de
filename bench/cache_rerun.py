"""A cached re-run of the training flow vs the cold run, on real months.

Target: the re-run is >= 5x faster and every task is `Cached`.
Run: .venv/bin/python bench/cache_rerun.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import isolated_taxiops

PAIRS = [("green_tripdata_2021-01.parquet", "green_tripdata_2021-02.parquet")]
TARGET_RATIO = 5.0


def main() -> int:
    from flows.train import train_duration_model

    failed = False
    for train_name, new_name in PAIRS:
        with isolated_taxiops([train_name, new_name]) as incoming:
            cold = train_duration_model(new_file=str(incoming / new_name))
            warm = train_duration_model(new_file=str(incoming / new_name))
        ratio = cold.seconds / warm.seconds
        all_cached = warm.cached_tasks == warm.total_tasks
        print(f"{train_name} -> {new_name}")
        print(
            f"  cold run   {cold.seconds:7.3f} s  ({cold.cached_tasks}/{cold.total_tasks} tasks cached)"
        )
        print(
            f"  cached run {warm.seconds:7.3f} s  ({warm.cached_tasks}/{warm.total_tasks} tasks cached)"
        )
        print(
            f"  ratio      {ratio:7.1f}x  (target >= {TARGET_RATIO:.0f}x), RMSE {cold.rmse:.3f} both runs: "
            f"{cold.rmse == warm.rmse}"
        )
        failed |= ratio < TARGET_RATIO or not all_cached
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
