"""Alerts soak: Slack down while good and bad months land; every alert must arrive after.

    .venv/bin/python bench/alerts_soak.py [--outage 600] [--rounds 4] [--junk 3]

A Prefect server (SQLite, loopback), `taxiops up` on a temp site, and the local
Slack-compatible inbox. After a first month is alerted, the inbox goes down (port closed)
for the first 70% of `--outage` seconds and answers HTTP 500 for the rest, while `--rounds`
good months and `--junk` junk files per round land; then it paces like Slack (one post a
second, else 429 Retry-After: 1). Prints alerts expected against delivered (singles plus
those a grouped storm message counts), duplicates, the most messages the receiver got in
one second, and the time from recovery to the last delivery.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import keep_prefect_local  # noqa: E402

keep_prefect_local()

from tests.e2e.harness import UP_READY, Site, wait_until  # noqa: E402

from taxiops.app.server import LocalPrefectServer, free_port  # noqa: E402
from taxiops.notify import InboxMessage  # noqa: E402

_GROUPED = re.compile(r"(\d+) more files rejected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=600.0, help="Seconds Slack is down.")
    parser.add_argument("--rounds", type=int, default=4, help="Good months during the outage.")
    parser.add_argument("--junk", type=int, default=3, help="Junk files per round.")
    args = parser.parse_args()

    from taxiops.notify import SlackInbox
    from taxiops.notify.outbox import Outbox

    root = Path(tempfile.mkdtemp(prefix="taxiops-alerts-soak-"))
    server = LocalPrefectServer(state_dir=root / "server", port=free_port())
    server.start(timeout=180)
    try:
        with SlackInbox(echo=False) as inbox:
            site = Site(root / "site", api_url=server.api_url, slack_webhook_url=inbox.url)
            with site.start("up") as up:
                up.wait_for_log(UP_READY, timeout=180)
                site.drop("green", "2023-01")
                inbox.wait_for(1, timeout=300)
                baseline = len(inbox.messages)
                inbox.set_mode("down")
                began = time.monotonic()
                goods, junk = [], []
                for number in range(args.rounds):
                    goods.append(site.drop("green", f"2023-{number + 2:02d}"))
                    for extra in range(args.junk):
                        staged = (
                            site.staging / f"green_tripdata_{2100 + number * 50 + extra}-13.parquet"
                        )
                        staged.write_bytes(b"junk")
                        junk.append(staged.rename(site.incoming / staged.name))
                    time.sleep(args.outage * 0.6 / args.rounds)
                _sleep_until(began + args.outage * 0.7)
                inbox.set_mode("error")
                _sleep_until(began + args.outage)
                inbox.set_mode("paced")
                recovered = time.monotonic()
                expected = baseline + len(goods) + len(junk)
                outbox = Outbox(site.home / "alerts.db")
                wait_until(
                    lambda: _told(inbox.messages) >= expected and outbox.counts().pending == 0,
                    900,
                    "every alert delivered",
                    every=0.5,
                )
                recovered_at = time.time() - (time.monotonic() - recovered)
                raised_before, took = _delivered_after(site.home / "alerts.db", recovered_at)
                _sleep_until(time.monotonic() + 5)  # a late duplicate would land now
                messages = inbox.messages
                busiest = inbox.busiest_second()
                refused = inbox.request_count - len(messages)
    finally:
        server.stop()

    texts = Counter(str(m.payload) for m in messages)
    print(
        f"outage: {args.outage:g} s (down {args.outage * 0.7:.0f} s, then HTTP 500), "
        f"then paced like Slack (429 Retry-After: 1)"
    )
    print(f"dropped during the outage: {len(goods)} good months, {len(junk)} junk files")
    print(f"alerts expected:            {expected}")
    print(
        f"alerts delivered:           {_told(messages)} in {len(messages)} messages "
        f"({sum(1 for m in messages if _GROUPED.search(m.header or ''))} grouped)"
    )
    print(f"duplicates:                 {sum(n - 1 for n in texts.values())}")
    print(f"most messages in a second:  {busiest}")
    print(
        f"time to deliver after recovery: {took:.1f} s "
        f"(the {raised_before} alerts raised before recovery; the rest came later)"
    )
    print(f"429 answers from the receiver:  {refused} requests refused (429, 500)")


def _told(messages: list[InboxMessage]) -> int:
    total = 0
    for message in messages:
        grouped = _GROUPED.search(message.header or "")
        total += int(grouped[1]) if grouped else 1
    return total


def _delivered_after(outbox: Path, recovered_at: float) -> tuple[int, float]:
    """How many alerts were raised before recovery, and when the last of them was done."""
    with sqlite3.connect(outbox) as db:
        count, done = db.execute(
            "SELECT COUNT(*), MAX(done_at) FROM alerts WHERE route != 'group' AND created_at < ?",
            (recovered_at,),
        ).fetchone()
    return int(count), float(done or recovered_at) - recovered_at


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


if __name__ == "__main__":
    main()
