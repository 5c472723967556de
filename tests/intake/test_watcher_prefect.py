"""`PrefectSubmitter` and the watcher on a real Prefect server (no worker: runs stay Scheduled)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey
from prefect.client.schemas.objects import FlowRun, State
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Crashed, Failed
from prefect.utilities.callables import parameter_schema

from taxiops import names
from taxiops.app.server import LocalPrefectServer, free_port
from taxiops.errors import ValidationRule
from taxiops.intake import (
    Backoff,
    FileState,
    HandOffError,
    IncomingFile,
    Ledger,
    PrefectSubmitter,
    PrefectUnreachableError,
    Rejection,
    RunStatus,
    Submission,
    arrival_event_id,
    describe_incoming,
)
from taxiops.settings import Settings
from tests.intake.watcher_helpers import ServiceFactory, parquet_bytes, wait_for, write_file

pytestmark = pytest.mark.timeout(90)


@flow(name=names.TRAIN_FLOW)
def stand_in_training_flow(new_file: str, expected_sha256: str | None = None) -> None:
    """Stands in for the training flow: same name, same parameters."""


@pytest.fixture(scope="module")
def api_url(prefect_server: LocalPrefectServer) -> Iterator[str]:
    """The session server, with the training deployment present (a stand-in if missing,
    deleted again afterwards: a runner serving the real one must not inherit it)."""
    created = None
    with SyncPrefectClient(prefect_server.api_url) as client:
        try:
            client.read_deployment_by_name(names.TRAIN_DEPLOYMENT_FULL)
        except ObjectNotFound:
            flow_id = client.create_flow(stand_in_training_flow)
            created = client.create_deployment(
                flow_id,
                names.TRAIN_DEPLOYMENT,
                # Enforced, so a hand-off with the wrong parameter names fails loudly.
                parameter_openapi_schema=parameter_schema(
                    stand_in_training_flow.fn
                ).model_dump_for_openapi(),
                enforce_parameter_schema=True,
            )
    yield prefect_server.api_url
    if created is not None:
        with SyncPrefectClient(prefect_server.api_url) as client:
            client.delete_deployment(created)


@pytest.fixture
def client(api_url: str) -> Iterator[SyncPrefectClient]:
    with SyncPrefectClient(api_url) as client:
        yield client


def month_file(folder: Path, seed: int, name: str) -> IncomingFile:
    folder.mkdir(parents=True, exist_ok=True)
    return describe_incoming(write_file(folder / name, parquet_bytes(seed)))


def runs_with_key(client: SyncPrefectClient, key: str) -> list[FlowRun]:
    key_filter = FlowRunFilterIdempotencyKey(any_=[key])
    return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(idempotency_key=key_filter)))


def handed_off(submitter: PrefectSubmitter, incoming: IncomingFile) -> Submission:
    """`submitter.submit`, tried again while the server answers 503: its SQLite database
    is locked now and then under load, and the watcher's backoff (not tested here) would
    try again too."""
    for attempt in range(1, 20):
        try:
            return submitter.submit(incoming)
        except HandOffError as exc:
            if "HTTP 503" not in str(exc):
                raise
            time.sleep(0.25 * attempt)
    return submitter.submit(incoming)


def test_submitting_the_same_bytes_twice_creates_one_flow_run(
    api_url: str, client: SyncPrefectClient, tmp_path: Path
) -> None:
    incoming = month_file(tmp_path, 1001, "green_tripdata_2023-01.parquet")
    submitter = PrefectSubmitter(api_url)

    first = handed_off(submitter, incoming)
    second = handed_off(submitter, incoming)

    assert first == second
    [run] = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[incoming.sha256])
        )
    )
    assert str(run.id) == first.flow_run_id
    assert run.parameters == {"new_file": str(incoming.path), "expected_sha256": incoming.sha256}
    assert run.deployment_id == client.read_deployment_by_name(names.TRAIN_DEPLOYMENT_FULL).id
    assert submitter.read_outcome(first.flow_run_id).status is RunStatus.ACTIVE


def test_discarding_an_interrupted_run_frees_its_key_for_a_new_run(
    api_url: str, tmp_path: Path
) -> None:
    incoming = month_file(tmp_path, 1099, "green_tripdata_2023-02.parquet")
    submitter = PrefectSubmitter(api_url)
    first = handed_off(submitter, incoming)

    submitter.discard(first.flow_run_id)
    submitter.discard(first.flow_run_id)  # already gone: not an error
    again = handed_off(submitter, incoming)

    assert again.flow_run_id != first.flow_run_id
    assert submitter.read_outcome(first.flow_run_id).status is RunStatus.MISSING


def test_the_arrival_event_reaches_the_server(
    api_url: str, client: SyncPrefectClient, tmp_path: Path
) -> None:
    incoming = month_file(tmp_path, 1002, "yellow_tripdata_2023-02.parquet")
    submitter = PrefectSubmitter(api_url)
    submission = handed_off(submitter, incoming)
    # A re-sent hand-off: same run, same event.
    assert handed_off(submitter, incoming) == submission
    resource_id = names.month_resource_id("yellow", "2023-02")
    event_filter = EventFilter(
        event=EventNameFilter(name=[names.DATA_ARRIVED]),
        resource=EventResourceFilter(id=[resource_id]),
    )

    def arrived() -> Event | None:
        # The server API caps a page at 50; the client's default of 100 is refused (422).
        page = client.read_events(filter=event_filter, limit=50)
        return next(
            (
                e
                for e in page.events
                if e.id == arrival_event_id(incoming.sha256, submission.flow_run_id)
            ),
            None,
        )

    event = wait_for(arrived, timeout=30, what="the arrival event in the event store")
    assert event.resource.id == resource_id
    assert event.resource[names.TAXI_TYPE_LABEL] == "yellow"  # what automations group by
    assert event.payload == {
        **incoming.event_payload(),
        "flow_run_id": submission.flow_run_id,
    }
    same_resource = client.read_events(filter=event_filter, limit=50).events
    assert sum(e.id == event.id for e in same_resource) == 1  # stored once
    related = {r.role: r.id for r in event.related}
    assert related["flow-run"] == f"prefect.flow-run.{submission.flow_run_id}"
    assert related["taxi-type"] == names.taxi_type_resource_id("yellow")


def test_a_rejection_is_announced_once_however_often_it_is_sent(
    api_url: str, client: SyncPrefectClient, tmp_path: Path
) -> None:
    # A name with a space and a non-ASCII letter: it must survive the resource id and payload.
    name = "grüen_tripdata_2023-03 (1).parquet"
    incoming, kept = tmp_path / "incoming" / name, tmp_path / "quarantine" / name
    outbox = Ledger(tmp_path / "ledger.sqlite3").outbox

    def refuse(quarantined_path: Path) -> Rejection:
        rejection = outbox.record(
            path=incoming,
            quarantined_path=quarantined_path,
            rule="file-name",
            detail="file name is not <green|yellow>_tripdata_YYYY-MM.parquet",
            message=f"{name}: file-name: ...",
        )
        assert rejection is not None
        return rejection

    rejection = refuse(kept)
    submitter = PrefectSubmitter(api_url)
    submitter.announce_rejection(rejection)
    submitter.announce_rejection(rejection)  # a re-send after a lost acknowledgement

    def stored(quarantined_path: Path) -> list[Event]:
        # A new filter each time: its default `occurred.until` is the time it is built.
        event_filter = EventFilter(
            event=EventNameFilter(name=[names.DATA_REJECTED]),
            resource=EventResourceFilter(id=[names.file_resource(name)["prefect.resource.id"]]),
        )
        # By payload, not by id: a re-send under a new id must count as a duplicate too.
        page = client.read_events(filter=event_filter, limit=50)
        return [e for e in page.events if e.payload["quarantined_to"] == str(quarantined_path)]

    [event] = wait_for(lambda: stored(kept), timeout=30, what="the rejection in the event store")
    assert str(event.id) == rejection.id
    assert event.resource.name == name
    assert event.payload["path"] == str(incoming)
    assert event.payload["rule"] == "file-name"
    assert event.payload["hint"] == ValidationRule.FILE_NAME.hint

    submitter.announce_rejection(rejection)  # re-sent once the first is stored
    # The server persists events in the order it received them, a batch per transaction:
    # once an event sent after the re-send is stored, the re-send was handled too, so a
    # duplicate would be in the store by now.
    later = refuse(kept.with_name(f"{name}.later"))
    submitter.announce_rejection(later)
    wait_for(
        lambda: stored(kept.with_name(f"{name}.later")),
        timeout=30,
        what="an event sent after the re-send in the event store",
    )
    assert [str(e.id) for e in stored(kept)] == [rejection.id]


def test_flow_run_states_are_read_back_as_outcomes(
    api_url: str, client: SyncPrefectClient, tmp_path: Path
) -> None:
    submitter = PrefectSubmitter(api_url)
    cases: list[tuple[State[Any], RunStatus]] = [
        (Completed(), RunStatus.SUCCEEDED),
        # How the training flow reports a broken data rule: a Failed state named Rejected.
        (
            Failed(
                name=names.REJECTED_STATE,
                message="green_tripdata_2019-01.parquet: no-rows-left: ...",
            ),
            RunStatus.REJECTED,
        ),
        (
            Failed(
                message="Flow run encountered an exception: DataValidationError: "
                "green_tripdata_2023-03.parquet: missing-column: ..."
            ),
            RunStatus.REJECTED,
        ),
        (Failed(message="Flow run encountered an exception: MemoryError"), RunStatus.FAILED),
        (Crashed(message="the process was killed"), RunStatus.CRASHED),
    ]
    for seed, (state, expected) in enumerate(cases):
        incoming = month_file(tmp_path, 1010 + seed, f"green_tripdata_2019-{seed + 1:02d}.parquet")
        run_id = handed_off(submitter, incoming).flow_run_id
        client.set_flow_run_state(run_id, state, force=True)
        assert submitter.read_outcome(run_id).status is expected, state
    assert submitter.read_outcome(str(uuid.uuid4())).status is RunStatus.MISSING


def test_the_watcher_hands_off_and_follows_runs_on_a_real_server(
    api_url: str,
    client: SyncPrefectClient,
    make_service: ServiceFactory,
    watch_settings: Settings,
) -> None:
    service = make_service(PrefectSubmitter(api_url), poll_runs_every_seconds=0.2)
    service.start()
    path = write_file(
        watch_settings.incoming_dir / "green_tripdata_2020-01.parquet", parquet_bytes(1020)
    )
    entry = wait_for(lambda: service.ledger.submitted(), what="a submitted file")[0]
    assert entry.path == path.resolve() and entry.flow_run_id is not None
    assert len(runs_with_key(client, entry.sha256)) == 1

    # The run vanishes from the server: the file is handed off again (new run, same key).
    client.delete_flow_run(uuid.UUID(entry.flow_run_id))
    again = wait_for(
        lambda: [e for e in service.ledger.submitted() if e.flow_run_id != entry.flow_run_id],
        what="a second hand-off",
    )[0]
    assert again.sha256 == entry.sha256 and again.flow_run_id is not None
    assert len(runs_with_key(client, entry.sha256)) == 1

    client.set_flow_run_state(again.flow_run_id, Completed(), force=True)
    done = wait_for(
        lambda: [e for e in service.ledger.entries() if e.state is FileState.SUCCEEDED],
        what="the run's success recorded",
    )[0]
    assert done.sha256 == entry.sha256


def test_an_unreachable_api_keeps_the_file_pending(
    make_service: ServiceFactory, watch_settings: Settings, tmp_path: Path
) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/api"
    submitter = PrefectSubmitter(dead_url)
    incoming = month_file(tmp_path / "elsewhere", 1030, "yellow_tripdata_2020-02.parquet")
    with pytest.raises(ConnectionError) as raised:
        submitter.submit(incoming)
    assert isinstance(raised.value, PrefectUnreachableError)
    assert raised.value.api_url == dead_url and dead_url in str(raised.value)
    with pytest.raises(PrefectUnreachableError):
        submitter.read_outcome(str(uuid.uuid4()))

    # A long backoff, so the test ends right after the first failed attempt.
    service = make_service(submitter, backoff=Backoff(first_delay_seconds=60))
    service.start()
    write_file(watch_settings.incoming_dir / "yellow_tripdata_2020-03.parquet", parquet_bytes(1031))
    wait_for(lambda: service.stats().failed_attempts >= 1, what="a failed hand-off")
    service.stop()
    [entry] = service.ledger.entries()
    assert entry.state is FileState.SEEN and entry.flow_run_id is None
    assert entry.attempts >= 1 and dead_url in (entry.detail or "")
    assert entry.next_attempt_at is not None


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_failing_api_is_tried_once_per_hand_off(tmp_path: Path) -> None:
    # Prefect's client would retry a 503 five times over about a minute; the watcher's
    # own backoff owns retries, so one hand-off attempt must end quickly.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        submitter = PrefectSubmitter(f"http://127.0.0.1:{server.server_port}/api")
        incoming = month_file(tmp_path, 1040, "green_tripdata_2020-04.parquet")
        started = time.monotonic()
        with pytest.raises(HandOffError, match="HTTP 503"):
            submitter.submit(incoming)
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
