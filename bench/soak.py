"""Soak: good and bad month files for a few minutes while the watcher is SIGKILLed and restarted.

    .venv/bin/python bench/soak.py [--seconds 180] [--files 60] [--kill-every 20] [--outage 60]

Everything runs on loopback under a temp folder: a Prefect server (SQLite), `taxiops up
--no-watch` against it (the runner and the automations, alerting a local Slack-compatible
inbox) and a separate `taxiops watch` that is killed with SIGKILL every `--kill-every`
seconds and restarted. With `--outage N` the Prefect server is also stopped for N seconds
a third of the way in and started again on the same port and database (the runner and
the watcher must ride it out). Bounded in time and count. Prints files
dropped per kind, flow runs, duplicates (must be 0), lost (must be 0), alerts per kind
against what each file should have caused, and the peak memory of the service.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests.bad_input`: the same bad files the tests drop

from _common import _UNSHARED_ENV, _descendants, _stop_process_tree, keep_prefect_local  # noqa: E402

keep_prefect_local()

from tests.e2e.harness import UP_READY, TaxiopsProcess  # noqa: E402

from taxiops.app.server import LocalPrefectServer, free_port  # noqa: E402

GOOD_ROWS = 3_000
MAX_FILE_BYTES = 32 * 1024**2
SETTLE_TIMEOUT = 300.0


@dataclass
class Dropped:
    """One entry dropped into the incoming folder and what it must end as."""

    name: str
    kind: str  # "good", "duplicate", "vanished" or a bad kind of tests.bad_input
    expected_rule: str | None  # the quarantine reason's rule, for bad kinds
    checked_by: str  # "watcher", "flow" or "-"


@dataclass
class Soak:
    root: Path
    env: dict[str, str]
    server: LocalPrefectServer
    incoming: Path
    staging: Path
    quarantine: Path
    up: TaxiopsProcess | None = None
    watcher: TaxiopsProcess | None = None
    kills: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    peak_rss: int = 0
    outage_thread: threading.Thread | None = None
    stop_sampling: threading.Event = field(default_factory=threading.Event)

    def start_up(self) -> None:
        self.up = self._process("up", "--no-watch").start()
        self.up.wait_for_log(UP_READY, timeout=180)

    def start_watcher(self) -> None:
        if self.watcher is None:
            self.watcher = self._process("watch")
        self.watcher.start()

    def kill_watcher(self) -> None:
        if self.watcher is not None and self.watcher.alive:
            self.watcher.kill()
            self.kills += 1

    def _process(self, *args: str) -> TaxiopsProcess:
        return TaxiopsProcess(
            list(args), self.env, cwd=self.root, log_path=self.root / f"{args[0]}.log"
        )

    def sample_memory(self) -> None:
        """Peak RSS of the whole service: server, `up` (runner, flow-run processes), watcher."""
        while not self.stop_sampling.wait(0.5):
            pids = []
            processes = (p for p in (self.up, self.watcher) if p is not None and p.alive)
            for pid in (self.server.pid, *(p.pid for p in processes)):
                if pid is not None and _rss(pid):
                    pids.append(pid)
                    pids.extend(_descendants(pid))
            self.peak_rss = max(self.peak_rss, sum(_rss(pid) for pid in pids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="How long files are dropped.")
    parser.add_argument("--files", type=int, default=60, help="At most this many entries.")
    parser.add_argument(
        "--kill-every", type=float, default=20.0, help="SIGKILL the watcher this often."
    )
    parser.add_argument(
        "--outage", type=float, default=0.0, help="Stop the Prefect server this long, once."
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from taxiops.notify import SlackInbox

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="taxiops-soak-"))
    data = root / "data"
    incoming, staging = data / "incoming", data / "staging"
    incoming.mkdir(parents=True)
    staging.mkdir()
    server = LocalPrefectServer(state_dir=root / "server", port=free_port())
    server.start()
    with SlackInbox(echo=False) as inbox:
        env = {k: v for k, v in os.environ.items() if k not in _UNSHARED_ENV}
        env.update(
            PREFECT_API_URL=server.api_url,
            TAXIOPS_HOME=str(root / "home"),
            TAXIOPS_INCOMING_DIR=str(incoming),
            TAXIOPS_MAX_FILE_BYTES=str(MAX_FILE_BYTES),
            TAXIOPS_WATCH_INCOMPLETE_SECONDS="3",
            TAXIOPS_WATCH_BACKOFF_MAX_SECONDS="2",
            TAXIOPS_WATCH_POLL_RUNS_SECONDS="1",
            TAXIOPS_WATCH_CLAIM_LEASE_SECONDS="10",
            SLACK_WEBHOOK_URL=inbox.url,
            PREFECT_HOME=str(root / "prefect-home"),
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        soak = Soak(
            root=root,
            env=env,
            server=server,
            incoming=incoming,
            staging=staging,
            quarantine=data / "quarantine",
        )
        sampler = threading.Thread(target=soak.sample_memory, daemon=True)
        try:
            soak.start_up()
            soak.start_watcher()
            sampler.start()
            print(
                f"soak: {args.seconds:.0f} s, <= {args.files} entries, watcher SIGKILL every "
                f"{args.kill_every:.0f} s, server outage {args.outage:.0f} s; state in {root}"
            )
            started = time.monotonic()
            drop_phase(soak, args, rng)
            if soak.outage_thread is not None:
                soak.outage_thread.join()  # the server is back before anything is judged
            settled = wait_until_settled(soak)
            report(soak, inbox, time.monotonic() - started, settled)
        finally:
            if soak.outage_thread is not None:
                soak.outage_thread.join()
            soak.stop_sampling.set()
            if soak.watcher is not None:
                soak.watcher.kill()
            if soak.up is not None:
                _stop_process_tree(soak.up.process)
            server.stop()
            if os.environ.get("TAXIOPS_SOAK_KEEP"):
                print(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


def drop_phase(soak: Soak, args: argparse.Namespace, rng: random.Random) -> None:
    from tests.bad_input import BAD_KINDS

    from taxiops.ml import write_synth_month
    from taxiops.tripfile import Month

    interval = max(0.5, args.seconds / max(1, args.files))
    deadline = time.monotonic() + args.seconds
    next_kill = time.monotonic() + args.kill_every
    outage_at = time.monotonic() + args.seconds / 3 if args.outage > 0 else None
    bad_kinds = list(BAD_KINDS.values())
    good_month = {"green": Month(2015, 1), "yellow": Month(2015, 1)}
    good_names: list[Path] = []
    index = 0
    while time.monotonic() < deadline and len(soak.dropped) < args.files:
        index += 1
        roll = rng.random()
        if roll < 0.5 or not good_names:
            taxi_type = rng.choice(["green", "yellow"])
            month = good_month[taxi_type]
            good_month[taxi_type] = month.shift(1)
            staged = write_synth_month(soak.staging, taxi_type, month, rows=GOOD_ROWS, seed=index)  # type: ignore[arg-type]
            target = soak.incoming / staged.name
            os.replace(staged, target)
            good_names.append(target)
            soak.dropped.append(Dropped(target.name, "good", None, "-"))
        elif roll < 0.55:
            # The same bytes under a second name: must not train again.
            source = rng.choice(good_names)
            if source.exists():
                copy = (
                    soak.staging
                    / f"yellow_tripdata_{2060 + index // 12}-{index % 12 + 1:02d}.parquet"
                )
                shutil.copyfile(source, copy)
                os.replace(copy, soak.incoming / copy.name)
                soak.dropped.append(Dropped(copy.name, "duplicate", None, "-"))
        elif roll < 0.6:
            # Deleted right after it landed: nothing to keep, nothing to train.
            vanishing = (
                soak.incoming / f"green_tripdata_{2070 + index // 12}-{index % 12 + 1:02d}.parquet"
            )
            vanishing.write_bytes(b"PAR1 not yet")
            vanishing.unlink()
            soak.dropped.append(Dropped(vanishing.name, "vanished", None, "-"))
        else:
            kind = bad_kinds[index % len(bad_kinds)]
            # Bad months sort after every good one, so no good run trains on them.
            month = Month(2030, 1).shift(index)
            entry = kind.make(soak.incoming, soak.staging, month, index)
            soak.dropped.append(Dropped(entry.name, kind.name, kind.expected_rule, kind.checked_by))
        now = time.monotonic()
        if now >= next_kill:
            soak.kill_watcher()
            time.sleep(rng.uniform(0.2, 2.0))
            soak.start_watcher()
            next_kill = time.monotonic() + args.kill_every
        if outage_at is not None and now >= outage_at:
            # In the background: files keep arriving while the server is down.
            soak.outage_thread = threading.Thread(target=outage, args=(soak, args.outage))
            soak.outage_thread.start()
            outage_at = None
        time.sleep(interval * rng.uniform(0.5, 1.5))


def outage(soak: Soak, seconds: float) -> None:
    """Stop the Prefect server, then start it again on the same port and database."""
    print(f"  server outage: {seconds:.0f} s (files keep arriving)")
    soak.server.stop()
    time.sleep(seconds)
    soak.server.start()


def wait_until_settled(soak: Soak) -> bool:
    """Until every good file has a finished run and every bad entry left the folder."""
    from taxiops.intake import Ledger

    deadline = time.monotonic() + SETTLE_TIMEOUT
    ledger_path = soak.root / "home" / "ledger.sqlite3"
    while time.monotonic() < deadline:
        if soak.watcher is None or not soak.watcher.alive:
            soak.start_watcher()
        entries = Ledger(ledger_path).entries() if ledger_path.exists() else []
        unfinished = [e for e in entries if not e.state.is_finished]
        lingering = [
            d
            for d in soak.dropped
            if d.expected_rule is not None and os.path.lexists(soak.incoming / d.name)
        ]
        if entries and not unfinished and not lingering:
            time.sleep(3.0)  # the last alerts are on their way through automations
            return True
        time.sleep(1.0)
    return False


def report(soak: Soak, inbox: object, seconds: float, settled: bool) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taxiops import names
    from taxiops.intake.quarantine import quarantined_entries, read_reason

    async def runs() -> list[tuple[str, str]]:
        async with get_client() as client:
            found = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[names.TRAIN_FLOW])), limit=200
            )
        return [
            (
                Path(str(run.parameters.get("new_file", ""))).name,
                run.state.name if run.state else "?",
            )
            for run in found
        ]

    with temporary_settings(updates={PREFECT_API_URL: soak.server.api_url}):
        flow_runs = asyncio.run(runs())
    runs_by_file = Counter(name for name, _ in flow_runs)
    states_by_file: dict[str, list[str]] = {}
    for name, state in flow_runs:
        states_by_file.setdefault(name, []).append(state)

    quarantined = {}
    for entry in quarantined_entries(soak.quarantine):
        reason = read_reason(entry)
        quarantined[str(reason["file"])] = str(reason["rule"])

    lost: list[str] = []
    for item in soak.dropped:
        if item.kind == "good":
            if states_by_file.get(item.name, [])[-1:] != ["Completed"]:
                lost.append(f"{item.name}: runs {states_by_file.get(item.name)}")
        elif item.expected_rule is not None:
            if quarantined.get(item.name) != item.expected_rule:
                lost.append(
                    f"{item.name} ({item.kind}): quarantined as {quarantined.get(item.name)}"
                )
        elif item.kind == "duplicate" and runs_by_file.get(item.name):
            lost.append(f"{item.name}: same bytes as a trained file, yet ran")
    # A crashed run handed off again (TAXIOPS_RETRY_CRASHED_RUNS) is a retry, not a duplicate.
    retried = {n: s.count("Crashed") for n, s in states_by_file.items() if "Crashed" in s}
    duplicates = {
        name: states
        for name, states in states_by_file.items()
        if len(states) - retried.get(name, 0) > 1
    }

    alerts: Counter[str] = Counter(_alert_kind(m.header or "") for m in inbox.messages)  # type: ignore[attr-defined]
    kinds = Counter(item.kind for item in soak.dropped)
    expected = {
        "trained": kinds["good"],
        "rejected": sum(1 for item in soak.dropped if item.expected_rule is not None),
    }
    print(f"\n  settled:            {'yes' if settled else 'NO (timed out)'} after {seconds:.0f} s")
    print(
        f"  entries dropped:    {len(soak.dropped)}  "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )
    starts = soak.watcher.starts if soak.watcher is not None else 0
    print(f"  watcher SIGKILLs:   {soak.kills} (started {starts} times)")
    print(f"  flow runs:          {len(flow_runs)}  ({Counter(s for _, s in flow_runs)})")
    print(f"  crashed, retried:   {sum(retried.values())}  {retried or ''}")
    print(f"  duplicates:         {len(duplicates)}  {duplicates or ''}")
    print(f"  lost:               {len(lost)}")
    for line in lost[:20]:
        print(f"    - {line}")
    print("  alerts sent:        " + ", ".join(f"{k} {n}" for k, n in sorted(alerts.items())))
    print("  alerts expected:    " + ", ".join(f"{k} {n}" for k, n in sorted(expected.items())))
    print(
        f"  peak memory:        {soak.peak_rss / 1024**2:,.0f} MiB (RSS of up + server + runs + watcher)"
    )
    ok = settled and not duplicates and not lost and alerts["rejected"] == expected["rejected"]
    print(f"  result:             {'OK' if ok else 'FAILED'}")
    if not ok:
        sys.exit(1)


def _alert_kind(header: str) -> str:
    for needle, kind in (
        ("File rejected", "rejected"),
        ("Missing month", "missing-month"),
        (" crashed", "crashed"),
        (" timed out", "timed-out"),
        (" failed", "failed"),
        ("New champion", "trained"),
        ("Model trained", "trained"),
    ):
        if needle in header:
            return kind
    return "other"


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
