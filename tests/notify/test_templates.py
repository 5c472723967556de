"""The automation body templates, rendered by Prefect's own server-side sandbox."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect.server.events.actions import SendNotification
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.schemas.core import Flow
from prefect.server.schemas.responses import DeploymentResponse, FlowRunResponse
from prefect.server.schemas.states import State, StateType
from prefect.server.utilities.user_templates import (
    matching_types_in_templates,
    render_user_template,
)

from taxiops import names, payloads
from taxiops.notify import (
    FAILURE_BODY_TEMPLATE,
    MISSING_MONTH_BODY_TEMPLATE,
    REJECTED_BODY_TEMPLATE,
    SUBJECT_TEMPLATE,
    TRAINED_BODY_TEMPLATE,
    DataRejected,
    ModelTrained,
    MonthMissing,
    Notice,
    NoticeKind,
    RunFailure,
    block_kit_problems,
    render_slack,
)
from taxiops.notify.templates import no_new_data_body_template
from taxiops.settings import Settings

FLOW_ID, RUN_ID, DEPLOYMENT_ID = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
HOSTILE = 'He said "stop" </script> & it\'s {{ not a template }}\n\tC:\\temp \u00e9\u2603'
ALL_TEMPLATES = {
    "failure": FAILURE_BODY_TEMPLATE,
    "trained": TRAINED_BODY_TEMPLATE,
    "rejected": REJECTED_BODY_TEMPLATE,
    "missing": MISSING_MONTH_BODY_TEMPLATE,
    "subject": SUBJECT_TEMPLATE,
}


@pytest.fixture(scope="module", autouse=True)
def _prefect_filters() -> None:
    """Register `ui_url` & co. as the server does before its first render."""
    SendNotification._register_filters_if_needed()


def _flow_run(state_type: StateType = StateType.FAILED, name: str = "Failed") -> FlowRunResponse:
    return FlowRunResponse(
        id=RUN_ID,
        name="nice-otter",
        flow_id=FLOW_ID,
        deployment_id=DEPLOYMENT_ID,
        parameters={"new_file": "data/incoming/green_tripdata_2023-03.parquet", "force": False},
        state=State(type=state_type, name=name, message="from the API"),
        labels={},
    )


def _related() -> list[dict[str, str]]:
    return [
        {
            "prefect.resource.id": f"prefect.flow.{FLOW_ID}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": "train-duration-model",
        },
        {
            "prefect.resource.id": f"prefect.deployment.{DEPLOYMENT_ID}",
            "prefect.resource.role": "deployment",
            "prefect.resource.name": "on-new-file",
        },
    ]


def _state_event(state_name: str, message: str) -> ReceivedEvent:
    """A flow-run state-change event as `prefect.server.models.events` builds it."""
    return ReceivedEvent(
        occurred=datetime(2024, 3, 2, 6, 0, 5, tzinfo=UTC),
        event=f"prefect.flow-run.{state_name}",
        id=uuid.uuid4(),
        resource={
            "prefect.resource.id": f"prefect.flow-run.{RUN_ID}",
            "prefect.resource.name": "nice-otter",
            "prefect.run-count": "1",
            "prefect.state-message": message,
            "prefect.state-name": state_name,
            "prefect.state-timestamp": "2024-03-02T06:00:05+00:00",
            "prefect.state-type": "CRASHED" if state_name == "Crashed" else "FAILED",
        },
        related=_related(),
        payload={"intended": {"from": "RUNNING", "to": "FAILED"}, "validated_state": {}},
    )


def _custom_event(name: str, payload: dict[str, Any]) -> ReceivedEvent:
    """A custom event emitted inside a flow run (so the run is a related resource)."""
    return ReceivedEvent(
        occurred=datetime(2024, 3, 2, 6, 1, tzinfo=UTC),
        event=name,
        id=uuid.uuid4(),
        resource={"prefect.resource.id": names.month_resource_id("green", "2023-03")},
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{RUN_ID}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": "nice-otter",
            },
            *_related(),
        ],
        payload=payload,
    )


def _context(event: ReceivedEvent | None, *, with_objects: bool = True) -> dict[str, Any]:
    """What `JinjaTemplateAction._template_context` hands the renderer."""
    objects = with_objects and event is not None
    return {
        "event": event,
        "flow_run": _flow_run() if objects else None,
        "flow": Flow(id=FLOW_ID, name="train-duration-model") if objects else None,
        "deployment": (
            DeploymentResponse(id=DEPLOYMENT_ID, name="on-new-file", flow_id=FLOW_ID, labels={})
            if objects
            else None
        ),
    }


async def _render(template: str, context: dict[str, Any]) -> Notice:
    text = await render_user_template(template, context)
    json.loads(text)  # strict JSON first: a template bug shows here, not as a vague notice error
    notice = Notice.from_json(text)
    assert block_kit_problems(list(render_slack(notice.with_ui_url("http://ui")).blocks)) == []
    return notice


@pytest.mark.parametrize("template", ALL_TEMPLATES.values(), ids=ALL_TEMPLATES.keys())
def test_server_accepts_the_templates(template: str) -> None:
    action = SendNotification(
        block_document_id=uuid.uuid4(), subject=SUBJECT_TEMPLATE, body=template
    )
    assert action.body == template


def test_templates_only_ask_the_api_for_run_flow_and_deployment() -> None:
    every_type = {"flow_run", "flow", "deployment", "task_run", "work_pool", "work_queue",
                  "concurrency_limit", "variables"}  # fmt: skip
    for template in ALL_TEMPLATES.values():
        assert set(matching_types_in_templates([template], every_type)) <= {
            "flow_run",
            "flow",
            "deployment",
        }


@pytest.mark.parametrize(
    ("state_name", "kind"),
    [
        ("Failed", NoticeKind.FAILED),
        ("Crashed", NoticeKind.CRASHED),
        ("TimedOut", NoticeKind.TIMED_OUT),
    ],
)
async def test_failure_template(state_name: str, kind: NoticeKind) -> None:
    notice = await _render(
        FAILURE_BODY_TEMPLATE, _context(_state_event(state_name, f"boom: {HOSTILE}"))
    )

    assert notice.kind is kind
    assert isinstance(notice.facts, RunFailure)
    assert notice.facts.state == state_name
    assert notice.facts.message == f"boom: {HOSTILE}", "the event's message, byte for byte"
    assert notice.facts.parameters == {
        "new_file": "data/incoming/green_tripdata_2023-03.parquet",
        "force": False,
    }
    assert (notice.flow_run_id, notice.flow_run_name) == (str(RUN_ID), "nice-otter")
    assert (notice.flow_name, notice.deployment_name) == ("train-duration-model", "on-new-file")
    assert notice.occurred == "2024-03-02 06:00:05+00:00"


async def test_failure_template_without_api_objects_uses_the_event() -> None:
    notice = await _render(
        FAILURE_BODY_TEMPLATE,
        _context(_state_event("Crashed", "lost heartbeat"), with_objects=False),
    )

    assert notice.kind is NoticeKind.CRASHED
    assert notice.flow_run_id == str(RUN_ID), "from the event resource id"
    assert notice.flow_run_name == "nice-otter"
    assert notice.flow_name is None


async def test_failure_template_without_an_event() -> None:
    notice = await _render(FAILURE_BODY_TEMPLATE, _context(None))

    assert notice.kind is NoticeKind.FAILED
    assert notice.flow_run_id is None


async def test_trained_template_reads_the_training_summary_payload() -> None:
    payload = payloads.ModelTrained(
        taxi_type="green",
        month="2023-03",
        file="green_tripdata_2023-03.parquet",
        train_rows=43_000,
        val_rows=11_000,
        model_version="v12",
        promoted=True,
        promotion_reason=HOSTILE,
        rmse=5.42,
        mae=3.9,
        champion_version="v11",
        champion_rmse=5.61,
        champion_mae=4.0,
        seconds=12.5,
        champion_own_rmse=5.5,
        rows_read=45_000,
        rows_kept=44_000,
        null_shares={"trip_distance": 0.01},
        drift_psi={"trip_distance": 0.21, "duration": 0.02},
        drifted=["trip_distance"],
        drift_threshold=0.1,
        production_version="v12",
        replaced_version="v11",
        model_url="http://127.0.0.1:5000/#/models/taxi-duration-green/versions/12",
    ).model_dump(mode="json")
    notice = await _render(
        TRAINED_BODY_TEMPLATE, _context(_custom_event(names.MODEL_TRAINED, payload))
    )

    assert notice.kind is NoticeKind.SUCCEEDED
    assert isinstance(notice.facts, ModelTrained)
    assert notice.facts.to_payload() == payload
    assert (notice.flow_run_id, notice.flow_run_name) == (str(RUN_ID), "nice-otter")
    assert notice.event_id is not None


async def test_rejected_template_outside_a_flow_run() -> None:
    payload = payloads.DataRejected.for_file(
        "data/incoming/green_tripdata_2023-13.parquet",
        "file-name",
        HOSTILE,
        None,
        "data/quarantine/green_tripdata_2023-13.parquet",
    ).model_dump(mode="json")
    event = _custom_event(names.DATA_REJECTED, payload).model_copy(update={"related": []})

    notice = await _render(REJECTED_BODY_TEMPLATE, _context(event, with_objects=False))

    assert notice.kind is NoticeKind.REJECTED
    assert isinstance(notice.facts, DataRejected)
    assert notice.facts.detail == HOSTILE
    assert notice.flow_run_id is None


async def test_missing_month_template() -> None:
    payload = payloads.MonthMissing(
        taxi_type="yellow",
        expected_month="2024-02",
        newest_month="2024-01",
        days_since=41,
        folder="data/incoming",
    ).model_dump(mode="json")

    notice = await _render(
        MISSING_MONTH_BODY_TEMPLATE, _context(_custom_event(names.MONTH_MISSING, payload))
    )

    assert notice.kind is NoticeKind.MISSING_MONTH
    assert isinstance(notice.facts, MonthMissing)
    assert notice.facts.to_payload() == payload
    assert "Newest month here: 2024-01, 41 days ago." in render_slack(notice).text


async def test_the_no_new_data_template_sends_month_missing_fields(settings: Settings) -> None:
    template = no_new_data_body_template(35)
    text = await render_user_template(
        template, {"event": None, "labels": {names.TAXI_TYPE_LABEL: "green"}}
    )
    sent = json.loads(text)["payload"]
    assert sent == {"taxi_type": "green", "days_since": 35}
    assert set(sent) <= set(payloads.MonthMissing.model_fields)


@pytest.mark.parametrize("template", [TRAINED_BODY_TEMPLATE, REJECTED_BODY_TEMPLATE])
async def test_payload_templates_without_an_event_still_render_json(template: str) -> None:
    text = await render_user_template(template, _context(None))
    assert json.loads(text)["payload"] == {}


async def test_subject_template() -> None:
    event = _custom_event(names.MODEL_TRAINED, {})
    assert await render_user_template(SUBJECT_TEMPLATE, _context(event)) == "taxiops: nice-otter"
    assert await render_user_template(SUBJECT_TEMPLATE, _context(None)) == "taxiops: notification"


def test_every_notify_kind_in_the_automation_files_has_a_body(settings: Settings) -> None:
    import yaml

    from taxiops.notify.automations import AUTOMATIONS_DIR, body_templates

    kinds = {
        yaml.safe_load(path.read_text().replace("${", "{")).get("notify")
        for path in AUTOMATIONS_DIR.glob("*.yaml")
    } - {None}
    assert kinds and kinds <= body_templates(settings).keys()
