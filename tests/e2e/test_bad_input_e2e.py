"""Every kind of bad input, end to end: real server, `taxiops up` (runner, automations,
watcher), the local Slack-compatible inbox. Each entry must end in quarantine with a
reason naming its rule, alert exactly once, and leave the service training good files.

One `taxiops up` serves the whole module (its start costs ~10 s); each kind uses months
of its own, so the tests do not see each other's files.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from taxiops.app.server import LocalPrefectServer
from taxiops.intake.quarantine import quarantined_entries, read_reason
from taxiops.tripfile import Month
from tests.bad_input import BAD_KINDS, BadKind
from tests.e2e.harness import (
    HANDED_OFF,
    ServedSite,
    served_site,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

ALERT_TIMEOUT = 90.0
WATCHING = "taxiops.intake - watching "
REJECTED_HEADER = "File rejected"


class Service(ServedSite):
    """`taxiops up` (with its watcher) on one site, alerting one inbox."""

    @property
    def quarantine(self) -> Path:
        return self.site.root / "data" / "quarantine"

    def rejection_alerts(self, name: str) -> list[str]:
        return [
            m.header or ""
            for m in self.inbox.messages
            if REJECTED_HEADER in (m.header or "") and name in (m.header or "")
        ]


@pytest.fixture(scope="module")
def service(
    prefect_server: LocalPrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    # Spaces and non-ASCII in the folder path too: nothing on the way may choke on them.
    with served_site(
        prefect_server.api_url,
        tmp_path_factory.mktemp("bad input ünïcode"),
        env={
            "TAXIOPS_MAX_FILE_BYTES": str(32 * 1024**2),
            "TAXIOPS_WATCH_INCOMPLETE_SECONDS": "1",
            # One message per rejection: this module checks each kind's own alert, and its
            # 15 or so rejections would otherwise make a storm (tests/notify groups those).
            "TAXIOPS_ALERT_STORM_COUNT": "1000",
        },
    ) as served:
        yield Service(served.site, served.up, served.inbox)


@pytest.mark.parametrize("kind", list(BAD_KINDS.values()), ids=list(BAD_KINDS))
def test_bad_input_is_quarantined_with_its_reason_and_alerted(
    service: Service, kind: BadKind
) -> None:
    index = list(BAD_KINDS).index(kind.name)
    month = Month(2030, 1).shift(index)  # months of its own; later than any good month
    entry = kind.make(service.site.incoming, service.site.staging, month, service.site.seed + index)

    kept = service.quarantine / entry.name
    # The reason file is written first, then the entry moved next to it.
    wait_until(
        lambda: kept in quarantined_entries(service.quarantine),
        ALERT_TIMEOUT,
        f"{entry.name} ({kind.name}) to be quarantined",
    )
    reason = read_reason(kept)
    assert reason["rule"] == kind.expected_rule
    assert entry.name in str(reason["message"]) and reason["hint"]
    assert not Path(entry).exists() and not Path(entry).is_symlink()
    assert kept.exists() or kept.is_symlink()
    wait_until(
        lambda: service.rejection_alerts(entry.name),
        ALERT_TIMEOUT,
        f"the rejection alert for {entry.name}",
    )


def test_each_rejection_alerts_once_and_good_months_still_train(service: Service) -> None:
    own = BAD_KINDS["csv-renamed"].make(
        service.site.incoming, service.site.staging, Month(2040, 1), service.site.seed
    )
    good = service.site.drop("green", "2024-01")
    wait_until(
        lambda: any("green 2024-01" in (m.header or "") for m in service.inbox.messages),
        ALERT_TIMEOUT,
        "the trained alert of a good month dropped after the bad ones",
    )
    assert good.exists()  # a good month stays in the folder (it trains later months)
    wait_until(lambda: service.rejection_alerts(own.name), ALERT_TIMEOUT, f"alert for {own.name}")
    counts = {
        name: len(service.rejection_alerts(name))
        for name in (p.name for p in quarantined_entries(service.quarantine))
    }
    assert own.name in counts and all(count == 1 for count in counts.values()), counts
    # The service itself logged no error (a rejected run's own log says ERROR "rejected ...",
    # and Prefect's engine adds a traceback for every Failed run it executes: not ours).
    watcher_errors = [
        line for line in service.up.log(all_runs=True).splitlines() if "ERROR   | taxiops" in line
    ]
    assert not watcher_errors, watcher_errors


def test_a_file_deleted_right_after_it_landed_alerts_once_and_nothing_is_kept(
    service: Service,
) -> None:
    """Deleted between its event and its processing: whether the watcher (before the
    hand-off) or the run (after it) finds it gone, one file-vanished alert, nothing kept."""
    handed_before = service.up.log(all_runs=True).count(HANDED_OFF)
    path = service.site.drop("yellow", "2041-01")
    # Remove it the moment the watcher takes it: before the run's process reads it.
    wait_until(
        lambda: (
            service.up.log(all_runs=True).count(HANDED_OFF) > handed_before or not path.exists()
        ),
        ALERT_TIMEOUT,
        f"the hand-off of {path.name}",
        every=0.02,
    )
    path.unlink(missing_ok=True)

    [alert] = wait_until(
        lambda: service.rejection_alerts(path.name), ALERT_TIMEOUT, f"alert for {path.name}"
    )
    message = next(m for m in service.inbox.messages if m.header == alert)
    assert "file-vanished" in message.describe()
    assert not (service.quarantine / path.name).exists()


def test_the_incoming_folder_removed_under_up_is_watched_again(service: Service) -> None:
    """watchdog stops watching a removed folder; `taxiops up` restarts its watcher, which
    makes the folder again, and a month dropped into it trains."""
    shutil.rmtree(service.site.incoming)
    service.up.wait_for_log("the watcher stopped after", timeout=ALERT_TIMEOUT)
    wait_until(lambda: service.site.incoming.is_dir(), ALERT_TIMEOUT, "the folder made again")
    service.up.wait_for_log(WATCHING, timeout=ALERT_TIMEOUT, count=2)
    service.site.drop("green", "2045-01")
    wait_until(
        lambda: any("green 2045-01" in (m.header or "") for m in service.inbox.messages),
        ALERT_TIMEOUT,
        "the trained alert of a month dropped into the new folder",
    )
