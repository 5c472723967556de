"""Shared by the benchmarks: where the real data is, and a throwaway Prefect server."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("TAXIOPS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def real_month(name: str) -> Path:
    """A real TLC month from ../shared/data, or exit with a clear message."""
    path = SHARED_DATA / name
    if not path.is_file():
        sys.exit(f"skipped: {path} not found (set TAXIOPS_SHARED_DATA to the folder of TLC months)")
    return path


@contextmanager
def isolated_taxiops(months: list[str]) -> Iterator[Path]:
    """A temp TAXIOPS_HOME and incoming folder holding copies of `months`, and a real local
    Prefect server (unless PREFECT_API_URL is set); yields the incoming folder."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from taxiops.server import LocalPrefectServer, free_port

    root = Path(tempfile.mkdtemp(prefix="taxiops-bench-"))
    incoming = root / "incoming"
    incoming.mkdir()
    for name in months:
        shutil.copy(real_month(name), incoming / name)
    os.environ.update(TAXIOPS_HOME=str(root / "home"), TAXIOPS_INCOMING_DIR=str(incoming))
    server = None
    try:
        if "PREFECT_API_URL" not in os.environ:
            server = LocalPrefectServer(state_dir=root / "server", port=free_port())
            server.start()
            os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings(updates={PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            yield incoming
    finally:
        if server is not None:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
            server.stop()
            os.environ.pop("PREFECT_API_URL", None)
        shutil.rmtree(root, ignore_errors=True)
