"""`taxiops retry FILE`: hand a file whose training run failed or crashed to Prefect again.

The ledger entry goes back to `seen` with its run number raised, so the next hand-off
uses a new idempotency key (`run_key`) and Prefect creates a new flow run; any
watcher on the ledger (this host or another) picks it up at its next look.
"""

from __future__ import annotations

from pathlib import Path

from taxiops.errors import RetryRefusedError
from taxiops.intake._ledger import FileState, Ledger, LedgerEntry
from taxiops.tripfile import sha256_of

_REFUSALS: dict[FileState, str] = {
    FileState.SEEN: "it is already on its way (waiting for a watcher to hand it off)",
    FileState.SUBMITTED: "it is already on its way (its flow run {run} has not finished)",
    FileState.SUCCEEDED: "its run {run} succeeded; drop new bytes to train again",
    FileState.REJECTED: (
        "it broke a data rule ({detail}); fix the file and drop the fixed bytes: "
        "they get a run of their own"
    ),
}


def find_entry(ledger: Ledger, file: str | Path) -> LedgerEntry | None:
    """The ledger entry of `file`: by its bytes when the path exists, else the newest entry
    whose file name is `file`'s name."""
    path = Path(file)
    if path.is_file():
        return ledger.get(sha256_of(path))
    named = [entry for entry in ledger.entries() if entry.path.name == path.name]
    return max(named, key=lambda entry: entry.seen_at) if named else None


def retry_file(ledger: Ledger, file: str | Path) -> LedgerEntry:
    """Queue a failed or crashed file for a new flow run; returns the updated entry.

    Raises `RetryRefusedError` when the ledger does not know the file (or, for a path,
    its current bytes) or its state cannot be retried (rejected data, a run still on
    its way, a run that succeeded).
    """
    entry = find_entry(ledger, file)
    if entry is None:
        detail = (
            "its bytes are not in the ledger: a watcher hands new bytes off on its own"
            if Path(file).is_file()
            else f"not in the ledger at {ledger.path}; check TAXIOPS_HOME and the name"
        )
        raise RetryRefusedError(str(file), detail)
    if not entry.state.can_retry:
        template = _REFUSALS.get(entry.state, "it is {state}")
        raise RetryRefusedError(
            entry.path.name,
            template.format(
                run=entry.flow_run_id or "-", detail=entry.detail or "-", state=entry.state
            ),
        )
    retried = ledger.retry(entry.sha256, reason=f"retry requested after {entry.state}")
    if retried is None:  # another process moved it meanwhile
        raise RetryRefusedError(entry.path.name, "its state changed meanwhile; try again")
    return retried
