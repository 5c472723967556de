"""The acknowledged hand-off to Prefect: one flow run of the training deployment per file content.

`Submitter` is the seam: the watcher needs only `submit` and `read_outcome`, so its
tests use a recording fake while `PrefectSubmitter` is tested against a real server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from taxiops import names
from taxiops.errors import HandOffError, PrefectUnreachableError, ValidationRule
from taxiops.intake._incoming import IncomingFile
from taxiops.intake._ledger import run_key
from taxiops.intake._outbox import Rejection
from taxiops.payloads import DataRejected

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.context import SettingsContext

    from taxiops.settings import Settings

# Arrival event ids derive from content and run, so a re-sent event is stored once.
_EVENT_NAMESPACE = uuid.UUID("5b0e8f4e-2a59-4c56-9a4c-0f3c1f6b8d21")
_REJECTION_MARKER = "DataValidationError"


class RunStatus(StrEnum):
    """What the watcher needs to know about a flow run."""

    ACTIVE = "active"  # scheduled, pending, running, paused: check again later
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CRASHED = "crashed"  # its process died (killed, out of memory, machine lost): may retry
    REJECTED = "rejected"  # failed on a data rule: fixing the file, not retrying, helps
    MISSING = "missing"  # the server has no such run: hand the file off again
    INTERRUPTED = "interrupted"  # cancelled because the service shut down: train it again


@dataclass(frozen=True)
class Submission:
    """Prefect's acknowledgement of a hand-off."""

    flow_run_id: str
    flow_run_name: str


@dataclass(frozen=True)
class RunOutcome:
    """The state of a flow run, reduced to what the ledger records."""

    status: RunStatus
    detail: str | None = None


class Submitter(Protocol):
    """Hands a complete file to the training flow and reports how its run went."""

    def submit(self, incoming: IncomingFile, *, runs: int = 1) -> Submission:
        """Create (or find, for the same bytes and run number) the training flow run;
        raise on any failure."""
        ...

    def announce_rejection(self, rejection: Rejection) -> None:
        """Emit `taxiops.data.rejected` for an entry the watcher refused; raise on failure.
        The event id is the rejection's id, so a re-sent event alerts once."""
        ...

    def read_outcome(self, flow_run_id: str) -> RunOutcome:
        """The current outcome of a flow run this submitter created."""
        ...

    def discard(self, flow_run_id: str) -> None:
        """Delete an interrupted flow run, so the same bytes can be handed off anew."""
        ...


# The message Prefect's runner gives the runs it cancels when it stops (Ctrl-C on `taxiops up`).
RUNNER_SHUTDOWN_MESSAGE = "Runner is shutting down"


def outcome_from_state(state_type: str, state_name: str, message: str | None) -> RunOutcome:
    """Map a Prefect state (`COMPLETED`, `FAILED`, ...) to a `RunOutcome`.

    A failed run broke a data rule (`rejected`) when its state is named
    `names.REJECTED_STATE` (how the training flow reports a `DataValidationError`)
    or when its message names `DataValidationError` (the exception escaped the flow).
    """
    detail = f"{state_name}: {message}" if message else state_name
    rejected = state_name == names.REJECTED_STATE or _REJECTION_MARKER in (message or "")
    match state_type.upper():
        case "COMPLETED":
            return RunOutcome(RunStatus.SUCCEEDED, detail)
        case "FAILED" if rejected:
            return RunOutcome(RunStatus.REJECTED, detail)
        case "CANCELLED" if RUNNER_SHUTDOWN_MESSAGE in (message or ""):
            return RunOutcome(RunStatus.INTERRUPTED, detail)
        case "CRASHED":
            return RunOutcome(RunStatus.CRASHED, detail)
        case "FAILED" | "CANCELLED":
            return RunOutcome(RunStatus.FAILED, detail)
        case _:
            return RunOutcome(RunStatus.ACTIVE, detail)


def arrival_event_id(sha256: str, flow_run_id: str) -> uuid.UUID:
    """The id of the `taxiops.data.arrived` event of these bytes handed to this run.

    Stable across re-sends of one hand-off (the idempotency key returns the same run),
    so the server stores the event once; a new run (the old one vanished) gets a new event.
    """
    return uuid.uuid5(_EVENT_NAMESPACE, f"{names.DATA_ARRIVED}:{sha256}:{flow_run_id}")


class PrefectSubmitter:
    """Creates a flow run of the training deployment and emits `taxiops.data.arrived`.

    The content SHA-256 (with the run number, for retries) is the flow run's idempotency
    key: submitting the same bytes again returns the run created the first time. The event is posted over HTTP, so
    `submit` returns only after the server acknowledged both the run and the event.
    """

    def __init__(
        self,
        api_url: str,
        *,
        deployment_name: str = names.TRAIN_DEPLOYMENT_FULL,
        request_timeout_seconds: float = 10.0,
        on_created: Callable[[], None] | None = None,
    ) -> None:
        """`on_created` is called once a flow run exists (`taxiops up` wakes its runner)."""
        self._api_url = api_url.rstrip("/")
        self._deployment_name = deployment_name
        self._timeout = request_timeout_seconds
        self._on_created = on_created
        self._one_try: SettingsContext | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PrefectSubmitter:
        """Use `PREFECT_API_URL` when set, else the local server `taxiops up` starts."""
        from prefect.settings import PREFECT_API_URL

        return cls(PREFECT_API_URL.value() or settings.api_url)

    @property
    def api_url(self) -> str:
        return self._api_url

    @property
    def deployment_name(self) -> str:
        return self._deployment_name

    @contextmanager
    def _client(self) -> Iterator[SyncPrefectClient]:
        """A fresh client that tries each request once: the watcher's backoff owns retries.

        Left alone, Prefect's client retries a request up to 5 times with exponential
        delays (and refused connections too, once it has connected), which would hold
        a file's claim and `stop()` for minutes.
        """
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.context import SettingsContext, get_settings_context
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_KEY,
            PREFECT_CLIENT_MAX_RETRIES,
        )

        if self._one_try is None:
            # Derived once: building Prefect settings costs ~50 ms, entering them ~0.1 ms.
            current = get_settings_context()
            settings = current.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
            self._one_try = SettingsContext(profile=current.profile, settings=settings)
        with SettingsContext(profile=self._one_try.profile, settings=self._one_try.settings):
            client = SyncPrefectClient(
                self._api_url,
                auth_string=PREFECT_API_AUTH_STRING.value(),
                api_key=PREFECT_API_KEY.value(),
                httpx_settings={"timeout": httpx.Timeout(self._timeout)},
            )
            with client:
                yield client

    def submit(self, incoming: IncomingFile, *, runs: int = 1) -> Submission:
        """Create flow run number `runs` of the training deployment for `incoming` and emit
        its arrival event."""
        from prefect.events import Event
        from prefect.exceptions import ObjectNotFound

        taxi_type, month = incoming.taxi_type, str(incoming.month)
        name = names.flow_run_name(incoming.path.name, incoming.sha256, runs)
        try:
            with self._answered_about(incoming.path), self._client() as client:
                deployment = client.read_deployment_by_name(self._deployment_name)
                run = client.create_flow_run_from_deployment(
                    deployment.id,
                    parameters={"new_file": str(incoming.path), "expected_sha256": incoming.sha256},
                    idempotency_key=run_key(incoming.sha256, runs),
                    name=name,
                    tags=["taxiops", f"taxi:{taxi_type}", f"month:{month}"],
                )
                if self._on_created is not None:
                    self._on_created()
                event = Event.model_validate(
                    {
                        "id": arrival_event_id(incoming.sha256, str(run.id)),
                        "event": names.DATA_ARRIVED,
                        # Carries the taxi-type label the "no new data" automation groups by.
                        "resource": names.month_resource(taxi_type, month, incoming.path.name),
                        "related": [
                            {
                                "prefect.resource.id": f"prefect.flow-run.{run.id}",
                                "prefect.resource.role": "flow-run",
                                "prefect.resource.name": run.name,
                            },
                            {
                                "prefect.resource.id": f"prefect.deployment.{deployment.id}",
                                "prefect.resource.role": "deployment",
                                "prefect.resource.name": self._deployment_name,
                            },
                            {
                                "prefect.resource.id": names.taxi_type_resource_id(taxi_type),
                                "prefect.resource.role": "taxi-type",
                            },
                        ],
                        "payload": incoming.event_payload(flow_run_id=str(run.id)),
                    }
                )
                client.request("POST", "/events", json=[event.model_dump(mode="json")])
        except ObjectNotFound as exc:
            raise HandOffError(
                incoming.path,
                self._api_url,
                f"deployment {self._deployment_name!r} not found; serve it with `taxiops up`",
            ) from exc
        return Submission(flow_run_id=str(run.id), flow_run_name=run.name)

    def announce_rejection(self, rejection: Rejection) -> None:
        """POST the rejection event; the server stores (and alerts on) one event per id."""
        from prefect.events import Event

        rule = ValidationRule(rejection.rule)
        event = Event.model_validate(
            {
                "id": rejection.id,
                "event": names.DATA_REJECTED,
                "resource": names.file_resource(rejection.path.name),
                "payload": DataRejected.for_file(
                    str(rejection.path),
                    rule.value,
                    rejection.detail,
                    rule.hint,
                    None if rejection.quarantined_path is None else str(rejection.quarantined_path),
                ).model_dump(mode="json"),
            }
        )
        with self._answered_about(rejection.path), self._client() as client:
            client.request("POST", "/events", json=[event.model_dump(mode="json")])

    @contextmanager
    def _answered_about(self, path: Path) -> Iterator[None]:
        """Turn httpx errors about `path`'s request into ours: no answer, or a refusal."""
        try:
            yield
        except httpx.TransportError as exc:
            raise PrefectUnreachableError(
                self._api_url, f"{type(exc).__name__}: {exc}", path
            ) from exc
        except httpx.HTTPStatusError as exc:
            raise HandOffError(
                path, self._api_url, f"HTTP {exc.response.status_code}: {exc.response.text[:500]}"
            ) from exc

    def discard(self, flow_run_id: str) -> None:
        """Delete the flow run: its idempotency key (the bytes' SHA-256) is free again."""
        from prefect.exceptions import ObjectNotFound

        try:
            with self._client() as client:
                client.delete_flow_run(uuid.UUID(flow_run_id))
        except ObjectNotFound:
            return
        except httpx.TransportError as exc:
            raise PrefectUnreachableError(self._api_url, f"{type(exc).__name__}: {exc}") from exc

    def read_outcome(self, flow_run_id: str) -> RunOutcome:
        """Read a flow run's state; `MISSING` when the server does not know the run."""
        from prefect.exceptions import ObjectNotFound

        try:
            run_uuid = uuid.UUID(flow_run_id)
        except ValueError:
            return RunOutcome(RunStatus.MISSING, f"{flow_run_id!r} is not a flow run id")
        try:
            with self._client() as client:
                run = client.read_flow_run(run_uuid)
        except ObjectNotFound:
            return RunOutcome(RunStatus.MISSING, f"flow run {flow_run_id} not found")
        except httpx.TransportError as exc:
            raise PrefectUnreachableError(self._api_url, f"{type(exc).__name__}: {exc}") from exc
        if run.state is None:
            return RunOutcome(RunStatus.ACTIVE)
        state = run.state
        return outcome_from_state(state.type.value, state.name or state.type.value, state.message)
