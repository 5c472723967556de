"""What MLflow costs a training run: the flow before MLflow (the folder registry of `--base`)
and now, side by side, on both real green pairs and on a 3M-row month.

Each run is a fresh `taxiops train NEW --train OLD --json` process with a new TAXIOPS_HOME
(cold caches, and now a new MLflow store), against one shared Prefect server; the
revisions alternate run by run. `--base` is checked out into a git worktree and run from
there (its own `src/` first on PYTHONPATH) with this venv. Also printed: the import of
MLflow and the opening of a new and an existing SQLite store, in fresh processes.

Run: .venv/bin/python bench/mlflow_cost.py [--base 5fddbe7] [--runs 3] [--rows 3000000]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import real_month

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("green_tripdata_2021-01.parquet", "green_tripdata_2021-02.parquet"),
    ("green_tripdata_2023-01.parquet", "green_tripdata_2023-02.parquet"),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="5fddbe7", help="the revision before MLflow")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3_000_000)
    args = parser.parse_args()

    from taxiops.app.server import LocalPrefectServer, free_port
    from taxiops.ml import resample_month

    scratch = Path(tempfile.mkdtemp(prefix="taxiops-mlflow-cost-"))
    base = scratch / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base],
        check=True,
    )
    big = scratch / "big"
    big.mkdir()
    for seed, name in enumerate(PAIRS[0]):
        resample_month(real_month(name), args.rows, seed=seed).to_parquet(big / name, index=False)
    datasets = [
        (real_month(old), real_month(new), f"{old[15:22]} -> {new[15:22]}") for old, new in PAIRS
    ]
    datasets.append((big / PAIRS[0][0], big / PAIRS[0][1], f"{args.rows / 1e6:g}M rows x2"))

    server = LocalPrefectServer(state_dir=scratch / "server", port=free_port())
    server.start()
    try:
        print_imports(args.runs, scratch)
        for old, new, label in datasets:
            times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for run in range(args.runs):
                for rev, checkout in (("before", base), ("after", ROOT)):
                    home = scratch / f"home-{rev}-{label[:7]}-{run}"
                    times[rev].append(train(checkout, home, old, new, server.api_url))
            print(f"{label}: process wall / flow seconds, median (worst) of {args.runs}")
            for rev, found in times.items():
                walls, flows = [w for w, _ in found], [f for _, f in found]
                print(
                    f"  {rev:<6} {statistics.median(walls):6.2f} s ({max(walls):6.2f})"
                    f"   flow {statistics.median(flows):6.2f} s ({max(flows):6.2f})"
                )
            added = statistics.median(w for w, _ in times["after"]) - statistics.median(
                w for w, _ in times["before"]
            )
            ratio = statistics.median(w for w, _ in times["after"]) / statistics.median(
                w for w, _ in times["before"]
            )
            print(f"  MLflow adds {added:+.2f} s per run (x{ratio:.2f})")
    finally:
        server.stop()
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
        )
    return 0


def train(checkout: Path, home: Path, old: Path, new: Path, api_url: str) -> tuple[float, float]:
    """Process wall seconds and the flow's own seconds of one `taxiops train`."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "TAXIOPS_HOME": str(home),
        "TAXIOPS_INCOMING_DIR": str(new.parent),
        "PYTHONPATH": f"{checkout / 'src'}{os.pathsep}{checkout}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "taxiops", "train", str(new), "--train", str(old), "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{checkout}: taxiops train failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, float(summary["seconds"])


def print_imports(runs: int, scratch: Path) -> None:
    """`import mlflow`, `import sklearn`, and opening a new / an existing SQLite store, in
    fresh processes."""
    probes = {
        "import mlflow": "import mlflow",
        # MLflow needs scikit-learn, and xgboost imports it when present: both revisions run
        # in this venv, so the side-by-side runs leave this cost out.
        "import sklearn (after numpy, pandas)": "import numpy, pandas; t = time.perf_counter(); import sklearn",
        "open a new store": "from taxiops.registry import ModelRegistry as R; "
        "R('sqlite:///{db}').ref()",
        "open an existing store": "from taxiops.registry import ModelRegistry as R; "
        "R('sqlite:///{db}').ref()",
    }
    print(f"fresh processes, median (worst) of {runs}:")
    for label, code in probes.items():
        seconds = []
        for run in range(runs):
            db = scratch / f"probe-{run}.db"
            script = f"import time; t = time.perf_counter(); {code.format(db=db)}; print(time.perf_counter() - t)"
            done = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            )
            seconds.append(float(done.stdout.strip().splitlines()[-1]))
        print(f"  {label:<36} {statistics.median(seconds):5.2f} s ({max(seconds):5.2f})")


if __name__ == "__main__":
    sys.exit(main())
