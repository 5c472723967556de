"""Watch the incoming folder and hand each complete month file to Prefect exactly once.

folder -> ledger (`FolderIntake`):
  watchdog event ─> IncomingFileHandler ─> Debouncer ─> inspect_entry (admission)
    ─> Ledger (seen)
  refused ─> quarantine/ + reason file ─> RejectionOutbox (alert pending)
ledger -> Prefect (`HandOff`):
  Ledger (seen) ─> Submitter (flow run + taxiops.data.arrived) ─> Ledger (submitted)
    ─> flow-run state read back ─> Ledger (succeeded | failed | crashed | rejected)
  RejectionOutbox ─> taxiops.data.rejected, once
"""

from __future__ import annotations

from taxiops.errors import HandOffError, PrefectUnreachableError, RetryRefusedError
from taxiops.intake._admission import (
    Admitted,
    Gone,
    Refused,
    StillArriving,
    Verdict,
    entry_signature,
    inspect_entry,
)
from taxiops.intake._backoff import Backoff
from taxiops.intake._handler import DEFAULT_IGNORE_PATTERNS, IncomingFileHandler
from taxiops.intake._incoming import (
    FileSignature,
    FileTouched,
    IncomingFile,
    describe_incoming,
    has_parquet_footer,
)
from taxiops.intake._ledger import FileState, Ledger, LedgerEntry, run_key
from taxiops.intake._outbox import Rejection, RejectionOutbox
from taxiops.intake._retry import retry_file
from taxiops.intake._service import WatcherService, rejection_rows, status_rows
from taxiops.intake._submitter import (
    PrefectSubmitter,
    RunOutcome,
    RunStatus,
    Submission,
    Submitter,
    arrival_event_id,
    outcome_from_state,
)
from taxiops.intake._worker import WatcherStats

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "Admitted",
    "Backoff",
    "FileSignature",
    "FileState",
    "FileTouched",
    "Gone",
    "HandOffError",
    "IncomingFile",
    "IncomingFileHandler",
    "Ledger",
    "LedgerEntry",
    "PrefectSubmitter",
    "PrefectUnreachableError",
    "Refused",
    "Rejection",
    "RejectionOutbox",
    "RetryRefusedError",
    "RunOutcome",
    "RunStatus",
    "StillArriving",
    "Submission",
    "Submitter",
    "Verdict",
    "WatcherService",
    "WatcherStats",
    "arrival_event_id",
    "describe_incoming",
    "entry_signature",
    "has_parquet_footer",
    "inspect_entry",
    "outcome_from_state",
    "rejection_rows",
    "retry_file",
    "run_key",
    "status_rows",
]
