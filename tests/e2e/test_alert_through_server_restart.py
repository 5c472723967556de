"""An alert pending while the embedded Prefect server of a real `taxiops up` is SIGKILLed
and restarted: the outbox keeps it, the restarted server renders new ones, and each
arrives once when Slack answers again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from taxiops.app.server import is_healthy
from taxiops.notify import SlackInbox
from taxiops.notify.outbox import Outbox
from tests.e2e.harness import (
    UP_READY,
    drop_junk,
    embedded_site,
    the_embedded_server,
    wait_until,
)

STARTUP_TIMEOUT = 360.0  # a first start on this busy 2-core machine took over 120 s
RECOVER_TIMEOUT = 120.0
FAST_ALERTS = {"TAXIOPS_ALERT_RETRY_MAX_SECONDS": "2"}


def test_alerts_pending_through_a_server_restart_arrive_once(tmp_path: Path) -> None:
    with SlackInbox(echo=False) as inbox:
        site = embedded_site(tmp_path / "site", inbox.url, env=FAST_ALERTS)
        outbox = Outbox(site.home / "alerts.db")
        with site.start("up") as up:
            up.wait_for_log(UP_READY, timeout=STARTUP_TIMEOUT)
            inbox.set_mode("down")
            before = drop_junk(site, 2101)
            wait_until(lambda: outbox.counts().pending == 1, 60, "the first alert pending")

            server = the_embedded_server(up.pid)
            os.kill(server, signal.SIGKILL)
            wait_until(lambda: not is_healthy(site.api_url), 10, "the server to be gone")
            wait_until(lambda: is_healthy(site.api_url), RECOVER_TIMEOUT, "the server back")
            assert the_embedded_server(up.pid) != server
            # The restarted server still fires the automations: a second alert, rendered
            # by the new server process, joins the first in the outbox.
            after = drop_junk(site, 2102)
            wait_until(lambda: outbox.counts().pending == 2, 90, "the second alert pending")
            assert inbox.request_count == 0  # Slack was down throughout

            inbox.set_mode("up")
            wait_until(lambda: outbox.counts().sent == 2, 60, "both alerts sent")
            assert up.alive
        names = [f.name for f in (before, after)]
        counts = {
            name: sum(name in (m.header or "") + (m.text or "") for m in inbox.messages)
            for name in names
        }
        assert counts == dict.fromkeys(names, 1), [m.header for m in inbox.messages]
    assert outbox.counts().pending == 0
