"""Watch the incoming folder and hand each complete month file to Prefect exactly once.

watchdog event ─> IncomingFileHandler ─> Debouncer ─> completeness check
    ─> Ledger (seen) ─> Submitter (flow run + taxiops.data.arrived) ─> Ledger (submitted)
    ─> flow-run state read back ─> Ledger (succeeded | failed | crashed | rejected)
"""

from __future__ import annotations

from taxiops.watcher._backoff import Backoff
from taxiops.watcher._handler import DEFAULT_IGNORE_PATTERNS, IncomingFileHandler
from taxiops.watcher._incoming import (
    FileSignature,
    FileTouched,
    IncomingFile,
    describe_incoming,
    has_parquet_footer,
)
from taxiops.watcher._ledger import FileState, Ledger, LedgerEntry, Rejection, run_key
from taxiops.watcher._service import WatcherService, WatcherStats, status_rows
from taxiops.watcher._submitter import (
    HandOffError,
    PrefectSubmitter,
    PrefectUnreachableError,
    RunOutcome,
    RunStatus,
    Submission,
    Submitter,
    arrival_event_id,
    outcome_from_state,
)

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "Backoff",
    "FileSignature",
    "FileState",
    "FileTouched",
    "HandOffError",
    "IncomingFile",
    "IncomingFileHandler",
    "Ledger",
    "LedgerEntry",
    "PrefectSubmitter",
    "PrefectUnreachableError",
    "Rejection",
    "RunOutcome",
    "RunStatus",
    "Submission",
    "Submitter",
    "WatcherService",
    "WatcherStats",
    "arrival_event_id",
    "describe_incoming",
    "has_parquet_footer",
    "outcome_from_state",
    "run_key",
    "status_rows",
]
