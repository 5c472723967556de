"""Four real months fetched into a running `taxiops up` over a slow link that cuts once.

A loopback TLC mirror (tests/intake/tlc_mirror.py) serves the four TLC months of
../shared/data under TLC's URL layout, through one 1 MiB/s link shared by all
connections, and cuts the connection of one month halfway, once. A real `taxiops fetch`
(a child process, 2 downloads at once) fetches them into the incoming folder of a real
`taxiops up` (its own Prefect server, watcher, served deployments).

Shows: the sha256 of each fetched file equals its source's; the watcher handed each to
Prefect once and each trained once (ledger `succeeded`, run 1; one flow run per file on
the server; no rejection); a second fetch skips all four without a download; wall times.

Run: .venv/bin/python bench/fetch.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SHARED_DATA, keep_prefect_local, real_month, taxiops_up

MONTHS = [
    "green_tripdata_2021-01.parquet",
    "green_tripdata_2021-02.parquet",
    "green_tripdata_2023-01.parquet",
    "green_tripdata_2023-02.parquet",
]
CUT_MONTH = "green_tripdata_2023-01.parquet"
RATE_BYTES_PER_SECOND = 1024**2
TRAIN_TIMEOUT_SECONDS = 600.0


def fetch(
    base_url: str, home: Path, incoming: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`taxiops fetch green ... --to incoming` as a child process; (result, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAXIOPS_", "PREFECT_"))}
    env.update(
        TAXIOPS_TLC_BASE_URL=base_url,
        TAXIOPS_HOME=str(home),  # the ledger of the `taxiops up` below
        TAXIOPS_FETCH_CONCURRENCY="2",
        PYTHONUNBUFFERED="1",
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "taxiops", "fetch", "green", "2021-01..2021-02", "2023-01,2023-02"]
        + ["--to", str(incoming)],
        cwd=incoming.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - started


def main() -> int:
    keep_prefect_local()
    from prefect.client.orchestration import get_client
    from tests.intake.tlc_mirror import TLCMirror

    from taxiops.intake import FileState
    from taxiops.tripfile import sha256_of

    sources = {name: real_month(name) for name in MONTHS}
    sizes = {name: path.stat().st_size for name, path in sources.items()}
    print(f"source: {SHARED_DATA}, {len(MONTHS)} months, {sum(sizes.values()) / 1024**2:.2f} MiB")
    failed = False
    with TLCMirror(SHARED_DATA) as mirror, taxiops_up() as up:
        print(f"`taxiops up` ready in {up.ready_seconds:.1f} s")
        mirror.rate_bytes_per_second = RATE_BYTES_PER_SECOND
        mirror.cut_after[CUT_MONTH] = sizes[CUT_MONTH] // 2
        started = time.monotonic()
        run, fetch_seconds = fetch(mirror.base_url, up.root / "home", up.incoming)
        print(f"\n`taxiops fetch` exit {run.returncode} in {fetch_seconds:.2f} s; its output:")
        print("\n".join(f"  | {line}" for line in run.stdout.splitlines() if "MiB of" not in line))
        failed |= run.returncode != 0

        gets = {name: [(g.range, g.status) for g in mirror.gets(name)] for name in MONTHS}
        print("\nGET requests per month (Range header, status):")
        for name in MONTHS:
            print(f"  {name}: {gets[name]}")
        failed |= len(gets[CUT_MONTH]) != 2 or gets[CUT_MONTH][1][1] != 206

        print("\nsha256, fetched vs source:")
        digests = {}
        for name in MONTHS:
            target = up.incoming / name
            digests[name] = sha256_of(sources[name])
            same = target.is_file() and sha256_of(target) == digests[name]
            failed |= not same
            print(f"  {name}: {digests[name][:16]}  {'equal' if same else 'DIFFERENT'}")
        leftovers = sorted(p.name for p in up.incoming.iterdir() if p.name not in MONTHS)
        print(f"  other entries in the folder: {leftovers or 'none'}")
        failed |= bool(leftovers)

        ledger = up.ledger()
        deadline = time.monotonic() + TRAIN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            states = {name: ledger.get(digests[name]) for name in MONTHS}
            if all(e is not None and e.state.is_finished for e in states.values()):
                break
            time.sleep(0.5)
        trained_seconds = time.monotonic() - started
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(limit=200)
        print("\nwatcher and training, per month:")
        for name in MONTHS:
            entry = ledger.get(digests[name])
            mine = [r for r in runs if r.parameters.get("new_file") == str(up.incoming / name)]
            final = [r.state.name for r in mine if r.state is not None]
            ok = (
                entry is not None
                and entry.state is FileState.SUCCEEDED
                and entry.runs == 1
                and len(mine) == 1
            )
            failed |= not ok
            state = "no ledger entry" if entry is None else f"{entry.state.value}, run {entry.runs}"
            print(f"  {name}: ledger {state}; flow runs {len(mine)} {final}")
        rejections = ledger.outbox.rejections()
        print(f"  rejections: {len(rejections)}; ledger entries: {len(ledger.entries())}")
        failed |= bool(rejections) or len(ledger.entries()) != len(MONTHS)

        mirror.rate_bytes_per_second = None
        mirror.requests.clear()
        again, again_seconds = fetch(mirror.base_url, up.root / "home", up.incoming)
        downloads = sum(r.method == "GET" for r in mirror.requests)
        print(
            f"\nsecond fetch of the same months: exit {again.returncode} in {again_seconds:.2f} s, "
            f"{downloads} downloads; {again.stdout.strip().splitlines()[-1]}"
        )
        failed |= again.returncode != 0 or downloads != 0
        log_summary = up.log_summary()

    total = sum(sizes.values())
    print(
        f"\nwall time: fetch {fetch_seconds:.2f} s for {total / 1024**2:.2f} MiB over a "
        f"{RATE_BYTES_PER_SECOND / 1024**2:.0f} MiB/s link with one cut "
        f"(the link alone: {total / RATE_BYTES_PER_SECOND:.2f} s); "
        f"fetch start to all four trained {trained_seconds:.1f} s"
    )
    print(log_summary)
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
