"""Rendering notices to Block Kit and plain text, and reading them from JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from taxiops import names, payloads
from taxiops.notify import (
    InvalidNoticeError,
    ModelTrained,
    Notice,
    NoticeKind,
    RunFailure,
    block_kit_problems,
    render_plain,
    render_plain_slack,
    render_slack,
)
from taxiops.notify.messages import (
    DATA_REJECTED_KEYS,
    MODEL_TRAINED_KEYS,
    MONTH_MISSING_KEYS,
)
from tests.notify.notify_helpers import (
    ALL_NOTICES,
    FLOW_RUN_ID,
    UI_URL,
    failure_notice,
    missing_notice,
    rejected_notice,
    trained_notice,
)

RUN_URL = f"{UI_URL}/runs/flow-run/{FLOW_RUN_ID}"


def _blocks_of(notice: Notice, kind: str) -> list[dict[str, Any]]:
    return [b for b in render_slack(notice).blocks if b["type"] == kind]


def _fields(notice: Notice) -> dict[str, str]:
    found = {}
    for block in _blocks_of(notice, "section"):
        for item in block.get("fields", []):
            name, _, value = item["text"].partition("\n")
            found[name.strip("*")] = value
    return found


@pytest.mark.parametrize("make", ALL_NOTICES.values(), ids=ALL_NOTICES.keys())
def test_every_kind_renders_valid_block_kit_with_button_and_fallback(
    make: Callable[[], Notice],
) -> None:
    notice = make()
    message = render_slack(notice)

    assert block_kit_problems(list(message.blocks)) == []
    assert message.blocks[0]["type"] == "header"
    assert message.text.startswith(message.blocks[0]["text"]["text"])
    assert RUN_URL in message.text
    [actions] = _blocks_of(notice, "actions")
    assert actions["elements"][0]["url"] == RUN_URL
    assert message.to_payload() == {"text": message.text, "blocks": list(message.blocks)}

    plain = render_plain(notice)
    assert plain.title == message.blocks[0]["text"]["text"]
    assert f"Flow run: {RUN_URL}" in plain.body
    assert "*" not in plain.body and "`" not in plain.body


def test_succeeded_shows_metrics_promotion_and_duration() -> None:
    notice = trained_notice()
    message = render_slack(notice)

    assert message.blocks[0]["text"]["text"] == "\U0001f3c6 New champion: green 2023-03"
    assert _fields(notice) == {
        "File": "`green_tripdata_2023-03.parquet`",
        "Rows read / kept": "55,000 / 54,321",
        "Rows train / validation": "43,000 / 11,321",
        "RMSE challenger vs champion": "5.420 vs 5.610 (\u22120.190)",
        "MAE challenger vs champion": "3.900 vs 4.000 (\u22120.100)",
        "Model version": "`v12`",
        "Champion before": "`v11`",
        "Promoted": "yes",
        "Duration": "1 min 23 s",
        "Largest drift (PSI)": "0.004 (trip_distance)",
    }
    summary = message.blocks[1]["text"]["text"]
    assert summary.startswith("*Promoted*: `v12` is the new champion, replacing `v11`.")
    assert "challenger RMSE 5.420 &lt; champion 5.610" in summary, "mrkdwn must be escaped"
    assert render_plain(notice).level == "success"


def test_succeeded_not_promoted_and_first_champion() -> None:
    kept = trained_notice(
        facts=ModelTrained(
            model_version="v13",
            promoted=False,
            rmse=6.0,
            champion_rmse=5.5,
            champion_version="v12",
            taxi_type="yellow",
            month="2024-01",
        )
    )
    first = trained_notice(
        facts=ModelTrained(
            model_version="v1", promoted=True, rmse=6.0, promotion_reason="first green model"
        )
    )

    assert kept.facts.to_payload()["promoted"] is False
    assert render_slack(kept).blocks[0]["text"]["text"] == (
        "\u2705 Model trained, champion kept: yellow 2024-01"
    )
    assert render_slack(kept).blocks[1]["text"]["text"] == (
        "*Not promoted*: `v12` stays; `v13` did not beat it."
    )
    assert _fields(kept)["RMSE challenger vs champion"] == "6.000 vs 5.500 (+0.500)"
    assert render_slack(first).blocks[1]["text"]["text"] == (
        "*Promoted*: `v1` is the first champion."
    )
    assert _fields(first)["RMSE challenger vs champion"] == "6.000 (no champion yet)"


@pytest.mark.parametrize(
    ("kind", "header"),
    [
        (NoticeKind.FAILED, "\u274c train-duration-model failed"),
        (NoticeKind.CRASHED, "\U0001f4a5 train-duration-model crashed"),
        (NoticeKind.TIMED_OUT, "\u23f1\ufe0f train-duration-model timed out"),
    ],
)
def test_failures_show_run_task_and_error(kind: NoticeKind, header: str) -> None:
    notice = failure_notice(kind)
    message = render_slack(notice)

    assert message.blocks[0]["text"]["text"] == header
    fields = _fields(notice)
    assert fields["Flow run"] == "`nice-otter`"
    assert fields["Failed task"] == "`load-month`"
    assert fields["Deployment"] == "`on-new-file`"
    code = [b["text"]["text"] for b in _blocks_of(notice, "section") if "text" in b][-1]
    assert code.startswith("```DataValidationError: green_tripdata_2023-03.parquet")
    assert "&lt;check&gt; &amp; retry" in code
    [context] = _blocks_of(notice, "context")
    assert "new_file=data/incoming/green_tripdata_2023-03.parquet" in context["elements"][0]["text"]
    plain = render_plain(notice)
    assert plain.level == "failure"
    assert "<check> & retry" in plain.body


def test_rejected_shows_file_rule_detail_and_quarantine() -> None:
    notice = rejected_notice()
    message = render_slack(notice)

    assert (
        message.blocks[0]["text"]["text"]
        == "\U0001f6ab File rejected: green_tripdata_2023-13.parquet"
    )
    assert _fields(notice) == {
        "File": "`green_tripdata_2023-13.parquet`",
        "Rule": "file-name",
        "Moved to": "`data/quarantine/green_tripdata_2023-13.parquet`",
    }
    texts = [b["text"]["text"] for b in _blocks_of(notice, "section") if "text" in b]
    assert "broke *file-name*: month 13 does not exist" in texts[0]
    assert "What to do: name it &lt;green|yellow&gt;_tripdata_YYYY-MM.parquet" in texts[1]
    assert render_plain(notice).level == "warning"


def test_missing_month_shows_expected_and_newest() -> None:
    notice = missing_notice()
    message = render_slack(notice)

    assert message.blocks[0]["text"]["text"] == "\U0001f4ed Missing month: yellow 2024-02"
    assert _fields(notice)["Days since last file"] == "41"
    assert _fields(notice)["Newest month seen"] == "2024-01"
    assert "No `yellow_tripdata_2024-02.parquet` has arrived" in message.blocks[1]["text"]["text"]
    assert "Newest month here: 2024-01, 41 days ago." in message.blocks[1]["text"]["text"]


def test_no_button_without_run_id_or_ui_url() -> None:
    for notice in (trained_notice(ui_url=None), rejected_notice(flow_run_id=None)):
        message = render_slack(notice)
        assert not [b for b in message.blocks if b["type"] == "actions"]
        assert "runs/flow-run" not in message.text
        assert block_kit_problems(list(message.blocks)) == []


def test_huge_and_hostile_text_stays_within_slack_limits() -> None:
    hostile = "```<script>&" + "x" * 10_000
    notice = failure_notice(
        flow_name="f" * 300,
        flow_run_name="`backtick`" * 50,
        facts=RunFailure(
            state="Failed",
            message=hostile,
            failed_task="t" * 3000,
            parameters={f"p{i}": "v" * 1000 for i in range(20)},
        ),
    )
    message = render_slack(notice)

    assert block_kit_problems(list(message.blocks)) == []
    assert len(message.text) <= 3000
    assert "<script>" not in json.dumps(message.to_payload())


def test_from_json_reads_a_template_rendering() -> None:
    body = json.dumps(
        {
            "kind": "succeeded",
            "event": names.MODEL_TRAINED,
            "flow_run_id": FLOW_RUN_ID,
            "flow_run_name": "nice-otter",
            "flow_name": "",
            "ui_url": UI_URL + "/api/",
            "unknown": {"ignored": True},
            "payload": {
                "taxi_type": "green",
                "month": "2023-03",
                "rmse": 5.1,
                "extra": 1,
                "flow_run_id": "not-this-one",
            },
        }
    )
    notice = Notice.from_json(body)

    assert notice.kind is NoticeKind.SUCCEEDED
    assert isinstance(notice.facts, ModelTrained)
    assert (notice.facts.taxi_type, notice.facts.month, notice.facts.rmse) == (
        "green",
        "2023-03",
        5.1,
    )
    assert notice.flow_run_id == FLOW_RUN_ID, "top-level keys win over payload keys"
    assert notice.flow_name is None, "empty strings count as missing"
    assert notice.ui_url == UI_URL
    assert notice.flow_run_url == RUN_URL


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"state": "Failed"}, NoticeKind.FAILED),
        ({"state": "Crashed"}, NoticeKind.CRASHED),
        ({"state": "TimedOut"}, NoticeKind.TIMED_OUT),
        ({"kind": "timed-out"}, NoticeKind.TIMED_OUT),
        ({"kind": "Missing-Month"}, NoticeKind.MISSING_MONTH),
        ({"event": names.DATA_REJECTED}, NoticeKind.REJECTED),
        ({"event": names.MONTH_MISSING}, NoticeKind.MISSING_MONTH),
        ({"event": "prefect.flow-run.Crashed"}, NoticeKind.CRASHED),
    ],
)
def test_kind_is_read_or_inferred(data: dict[str, str], kind: NoticeKind) -> None:
    assert Notice.from_json(json.dumps(data)).kind is kind


@pytest.mark.parametrize(
    "text",
    ["not json", "[1]", "null", '{"kind": "exploded"}', '{"state": "Completed"}', "{}"],
)
def test_from_json_rejects_what_is_not_a_notice(text: str) -> None:
    with pytest.raises(InvalidNoticeError):
        Notice.from_json(text)


def test_from_json_tolerates_missing_and_wrong_fields() -> None:
    notice = Notice.from_json(
        json.dumps(
            {
                "kind": "succeeded",
                "flow_run_id": f"prefect.flow-run.{FLOW_RUN_ID}",
                "payload": {"rmse": "not a number", "train_rows": "1200", "promoted": "true"},
            }
        )
    )

    assert isinstance(notice.facts, ModelTrained)
    assert notice.facts.rmse is None, "a field of the wrong type is dropped, not fatal"
    assert (notice.facts.train_rows, notice.facts.promoted) == (1200, True)
    assert notice.flow_run_id == FLOW_RUN_ID, "resource ids are reduced to the run id"
    assert notice.flow_run_url is None
    assert notice.with_ui_url(UI_URL).flow_run_url == RUN_URL
    assert block_kit_problems(list(render_slack(notice).blocks)) == []


def test_with_ui_url_keeps_an_explicit_one() -> None:
    notice = trained_notice(ui_url="https://prefect.example.com")
    assert notice.with_ui_url(UI_URL).ui_url == "https://prefect.example.com"
    assert trained_notice(flow_run_id="not-a-uuid").flow_run_id is None


def test_facts_must_match_kind() -> None:
    with pytest.raises(ValueError, match="needs ModelTrained facts"):
        Notice(kind=NoticeKind.SUCCEEDED, facts=RunFailure(state="Failed"))


def test_to_payload_is_json_without_gaps() -> None:
    payload = ModelTrained(taxi_type="green", rmse=math.nan, mae=3.0).to_payload()
    assert payload == {"taxi_type": "green", "mae": 3.0}
    json.dumps(payload, allow_nan=False)


def test_notices_read_the_fields_the_payload_models_send() -> None:
    from taxiops.pipeline.report import TrainingSummary

    assert set(DATA_REJECTED_KEYS) == set(payloads.DataRejected.model_fields)
    assert set(MONTH_MISSING_KEYS) == set(payloads.MonthMissing.model_fields)
    # `path` is an optional extra no emitter sends today.
    read = set(MODEL_TRAINED_KEYS) - {"path"}
    assert read == set(payloads.ModelTrained.model_fields)
    assert read <= set(TrainingSummary.model_fields), "the trained payload drifted from its summary"


def test_plain_body_becomes_text_only_slack_message() -> None:
    message = render_plain_slack("disk <full> & sad", subject="taxiops")
    assert message.to_payload() == {"text": "*taxiops*\ndisk &lt;full&gt; &amp; sad"}
    assert render_plain_slack("").text == "(empty notification)"


def test_notice_json_round_trips() -> None:
    for make in ALL_NOTICES.values():
        notice = make()
        assert Notice.from_json(notice.model_dump_json()) == notice


def test_the_rejection_payload_flows_and_watcher_send_renders_every_fact() -> None:
    payload = payloads.DataRejected.for_file(
        "/srv/data/incoming/green_tripdata_2023-03.parquet",
        "outside-month",
        "100% of 2,000 pickups fall outside 2023-03 (they span 2023-02-01 .. 2023-02-28)",
        "check the file holds the month its name says",
        "/srv/data/quarantine/green_tripdata_2023-03.parquet",
    ).model_dump(mode="json")
    assert set(payload) == set(DATA_REJECTED_KEYS)
    notice = Notice.model_validate(
        {"kind": NoticeKind.REJECTED, "facts": payload, "flow_run_id": FLOW_RUN_ID}
    )

    assert _fields(notice) == {
        "File": "`green_tripdata_2023-03.parquet`",
        "Rule": "outside-month",
        "Taxi type / month": "green 2023-03",
        "Moved to": "`/srv/data/quarantine/green_tripdata_2023-03.parquet`",
    }
    body = render_plain(notice).body
    assert "they span 2023-02-01 .. 2023-02-28" in body
    assert "What to do: check the file holds the month its name says" in body


def test_a_drifted_month_says_drift_first_and_names_features_with_their_psi() -> None:
    drifted = render_slack(trained_notice(drifted=True))
    assert "drift" in drifted.blocks[0]["text"]["text"]
    summary = str(drifted.blocks)
    assert "*Drift*" in summary and "trip_distance (PSI 0.27)" in summary
    assert "duration (PSI 0.17)" in summary and "threshold 0.1" in summary
    assert "Largest drift (PSI)" in summary and "0.270 (trip_distance)" in summary
    assert "Missing values: trip_distance 1.2%" in summary
    assert "Champion RMSE 5.610 on this month vs 5.300 on its own" in summary
    assert render_plain(trained_notice(drifted=True)).level == "warning"

    steady = render_slack(trained_notice())
    assert "drift" not in steady.blocks[0]["text"]["text"] and "*Drift*" not in str(steady.blocks)
    assert "0.004 (trip_distance)" in str(steady.blocks)
