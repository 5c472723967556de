"""Alerts delivered through outages, restarts and storms: the real session server, real
`taxiops up` processes, real HTTP to the loopback inbox switched between down (closed
port), HTTP 500, Slack-like pacing (429 Retry-After) and up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taxiops import names
from taxiops.app.server import LocalPrefectServer
from taxiops.notify import InboxMessage
from taxiops.notify.outbox import Outbox
from tests.e2e import harness
from tests.e2e.harness import (
    UP_READY,
    ServedSite,
    prefect_client,
    runs_by_file,
    served_site,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

REJECTED = "File rejected"
TRAINED = ("New champion", "trained", "First model")
# A compressed outage: retries at most 2 s apart instead of 5 minutes.
FAST_ALERTS = {
    "TAXIOPS_ALERT_RETRY_MAX_SECONDS": "2",
    "TAXIOPS_ALERT_STORM_COUNT": "5",
    "TAXIOPS_ALERT_STORM_WINDOW_SECONDS": "20",
}


def drop_junk(served: ServedSite, number: int) -> Path:
    """Junk number `number` (see the harness's `drop_junk`)."""
    return harness.drop_junk(served.site, 2100 + number)


def about(messages: list[InboxMessage], needle: str) -> list[InboxMessage]:
    return [m for m in messages if needle in (m.header or "") + (m.text or "")]


def outbox(served: ServedSite) -> Outbox:
    return Outbox(served.site.home / "alerts.db")


def tried(served: ServedSite) -> bool:
    import sqlite3

    path = served.site.home / "alerts.db"
    if not path.exists():
        return False
    with sqlite3.connect(path) as db:
        return (
            int(db.execute("SELECT COALESCE(SUM(attempts), 0) FROM deliveries").fetchone()[0]) > 0
        )


@contextmanager
def site(server: LocalPrefectServer, root: Path, **env: str) -> Iterator[ServedSite]:
    with served_site(server.api_url, root, env={**FAST_ALERTS, **env}) as served:
        yield served


def test_alert_pending_when_up_is_sigkilled_is_delivered_after_restart(
    prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    with site(prefect_server, tmp_path) as served:
        served.inbox.set_mode("down")
        junk = drop_junk(served, 1)
        wait_until(lambda: tried(served), 60, "a delivery attempt while Slack is down")
        served.inbox.set_mode("error")  # then HTTP 500: still not "sent"
        requests = served.inbox.request_count
        wait_until(lambda: served.inbox.request_count > requests, 30, "a try answered 500")
        assert outbox(served).counts().pending == 1
        status = served.site.run("status").stdout
        assert junk.name in status and "pending" in status.split(junk.name, 1)[1].splitlines()[0]

        served.up.kill()  # SIGKILL: the dispatcher dies with its alert undelivered
        served.inbox.set_mode("up")
        served.up.start()
        served.up.wait_for_log(UP_READY)
        served.inbox.wait_for(1, timeout=60)
        wait_until(lambda: outbox(served).counts().sent == 1, 30, "the alert marked sent")

        assert len(about(served.inbox.messages, junk.name)) == 1
        line = served.site.run("status").stdout.split(junk.name, 1)[1].splitlines()[0]
        assert " sent " in f" {line} "


def test_compressed_outage_loses_nothing_and_honours_retry_after(
    prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    with site(prefect_server, tmp_path) as served:
        served.site.drop("green", "2023-01")
        first = served.inbox.wait_for(1, timeout=120)
        served.inbox.set_mode("down")
        good = served.site.drop("green", "2023-02")
        junk = [drop_junk(served, n) for n in range(3)]
        wait_until(lambda: tried(served), 120, "attempts while Slack is down")
        time.sleep(8)  # the compressed outage: down ...
        served.inbox.set_mode("error")
        time.sleep(6)  # ... then failing with 500 ...
        served.inbox.set_mode("paced")  # ... then up, but pacing like Slack (429 Retry-After)
        recovered = time.monotonic()
        messages = served.inbox.wait_for(len(first) + 4, timeout=120)
        took = time.monotonic() - recovered
        wait_until(lambda: outbox(served).counts().pending == 0, 30, "nothing left pending")

        assert len(about(messages, "2023-02")) == 1, [m.header for m in messages]
        for entry in junk:
            assert len(about(messages, entry.name)) == 1
        assert served.inbox.busiest_second() <= 1
        assert took < 30, f"took {took:.1f} s after recovery"
        assert good.name  # the good month's alert came through the outage too


def test_storm_of_50_rejections_and_a_good_month(
    prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    with site(prefect_server, tmp_path) as served:
        junk = [drop_junk(served, n) for n in range(50)]
        good = served.site.drop("green", "2023-02")
        messages = served.inbox.wait_for(7, timeout=180)  # 5 single + good month + 1 grouped
        wait_until(lambda: outbox(served).counts().pending == 0, 60, "nothing left pending")
        messages = served.inbox.messages

        headers = [m.header or "" for m in messages]
        grouped = [m for m in messages if "45 more files rejected" in (m.header or "")]
        singles = [h for h in headers if REJECTED in h]
        assert len(singles) == 5 and len(grouped) == 1, headers
        assert len(messages) == 7, headers
        text = grouped[0].describe()
        assert "file-name" in text and "taxiops status" in text and "quarantine" in text
        good_alert = next(m for m in messages if "2023-02" in (m.header or ""))
        run = runs_by_file(served.site.api_url, [good])[good][-1]
        assert run.end_time is not None
        # The good month waited for no storm: its alert came within seconds of its run's end.
        assert (good_alert.received_at - run.end_time).total_seconds() < 5
        assert served.inbox.busiest_second() <= 1
        assert len(junk) == 50


def test_alert_past_max_age_is_undeliverable_in_status_and_as_an_event(
    prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    with site(prefect_server, tmp_path, TAXIOPS_ALERT_MAX_AGE_SECONDS="4") as served:
        served.inbox.set_mode("down")
        junk = drop_junk(served, 9)

        def undeliverable_line() -> str | None:
            status = served.site.run("status").stdout
            lines = status.split(junk.name, 1)[1].splitlines() if junk.name in status else [""]
            return status if "undeliverable" in lines[0] else None

        status = wait_until(undeliverable_line, 60, "status to say undeliverable")
        assert "1 undeliverable" in status
        rejection = served.site.ledger().outbox.rejections()[0]

        def reported() -> list[object]:
            with prefect_client(served.site.api_url) as client:
                answer = client.request(
                    "POST",
                    "/events/filter",
                    json={"filter": {"event": {"name": [names.ALERT_UNDELIVERABLE]}}, "limit": 50},
                )
            return [
                event
                for event in answer.json()["events"]
                if event["payload"].get("triggering_event_id") == rejection.id
            ]

        events = wait_until(reported, 60, "the taxiops.alert.undeliverable event")
        assert len(events) == 1
        served.inbox.set_mode("up")
        assert outbox(served).counts().sent == 0
