"""How a notice reads: Block Kit for Slack (`render_slack`), title and body for apprise
(`render_plain`). Pure functions of a `Notice`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Literal

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from taxiops.notify.messages import (
    DataRejected,
    ModelTrained,
    MonthMissing,
    Notice,
    NoticeKind,
    RunFailure,
)

NotifyLevel = Literal["info", "success", "warning", "failure"]

# Block Kit limits slack_sdk's block classes do not hold (they validate the others, which
# the code below reads from them); the inbox checks these two as well.
FIELD_TEXT_MAX = 2000
BLOCKS_MAX = 50
_FALLBACK_TEXT_MAX = 3000


@dataclass(frozen=True)
class SlackMessage:
    """A Slack message: fallback `text` (always set) and Block Kit `blocks`."""

    text: str
    blocks: tuple[dict[str, Any], ...] = ()

    def to_payload(self) -> dict[str, Any]:
        """The JSON body for an incoming webhook or `chat.postMessage`."""
        payload: dict[str, Any] = {"text": self.text}
        if self.blocks:
            payload["blocks"] = [dict(block) for block in self.blocks]
        return payload


@dataclass(frozen=True)
class PlainMessage:
    """A title and a plain-text body, for apprise; `level` is apprise's notify type."""

    title: str
    body: str
    level: NotifyLevel = "info"


@dataclass(frozen=True)
class _Format:
    """How inline text is marked up: Slack mrkdwn, or nothing for plain text."""

    text: Callable[[str], str]
    bold: Callable[[str], str]
    code: Callable[[str], str]


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MRKDWN = _Format(
    text=escape_mrkdwn,
    bold=lambda s: f"*{escape_mrkdwn(s).replace('*', '')}*",
    code=lambda s: f"`{escape_mrkdwn(s).replace('`', chr(0x2032))}`",
)
_PLAIN = _Format(text=lambda s: s, bold=lambda s: s, code=lambda s: s)


@dataclass
class _Layout:
    title: str
    level: NotifyLevel
    summary: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""
    details: str = ""
    context: list[str] = field(default_factory=list)


_EMOJI: Mapping[NoticeKind, str] = {
    NoticeKind.SUCCEEDED: "\u2705",
    NoticeKind.FAILED: "\u274c",
    NoticeKind.CRASHED: "\U0001f4a5",
    NoticeKind.TIMED_OUT: "\u23f1\ufe0f",
    NoticeKind.REJECTED: "\U0001f6ab",
    NoticeKind.MISSING_MONTH: "\U0001f4ed",
}
_PROMOTED_EMOJI = "\U0001f3c6"
_RUN_VERB: Mapping[NoticeKind, str] = {
    NoticeKind.FAILED: "failed",
    NoticeKind.CRASHED: "crashed",
    NoticeKind.TIMED_OUT: "timed out",
}
_LEVEL: Mapping[NoticeKind, NotifyLevel] = {
    NoticeKind.SUCCEEDED: "success",
    NoticeKind.FAILED: "failure",
    NoticeKind.CRASHED: "failure",
    NoticeKind.TIMED_OUT: "failure",
    NoticeKind.REJECTED: "warning",
    NoticeKind.MISSING_MONTH: "warning",
}
BUTTON_TEXT = "Open flow run in Prefect"
BUTTON_ACTION_ID = "taxiops-open-flow-run"
MODEL_BUTTON_TEXT = "Open model in MLflow"
MODEL_BUTTON_ACTION_ID = "taxiops-open-model"


def render_slack(notice: Notice) -> SlackMessage:
    """The Block Kit message for `notice`, within Slack's limits."""
    layout = _layout(notice, _MRKDWN)
    plain = _layout(notice, _PLAIN)
    blocks: list[Block] = [
        HeaderBlock(
            text=PlainTextObject(text=_clip(layout.title, HeaderBlock.text_max_length), emoji=True)
        )
    ]
    if layout.summary:
        blocks.append(_section(layout.summary))
    if layout.fields:
        fields = layout.fields[: SectionBlock.fields_max_length]
        blocks.append(
            SectionBlock(
                fields=[
                    MarkdownTextObject(text=_clip(f"*{name}*\n{value}", FIELD_TEXT_MAX))
                    for name, value in fields
                ]
            )
        )
    if layout.note:
        blocks.append(_section(layout.note))
    if layout.details:
        details = escape_mrkdwn(layout.details).replace("```", "'''")
        blocks.append(_section(f"```{_clip(details, SectionBlock.text_max_length - 6)}```"))
    if layout.context:
        parts = layout.context[: ContextBlock.elements_max_length]
        blocks.append(
            ContextBlock(
                elements=[
                    MarkdownTextObject(text=_clip(part, SectionBlock.text_max_length))
                    for part in parts
                ]
            )
        )
    url = notice.flow_run_url
    links = [
        (BUTTON_TEXT, url, BUTTON_ACTION_ID),
        (MODEL_BUTTON_TEXT, _model_url(notice), MODEL_BUTTON_ACTION_ID),
    ]
    buttons = [
        ButtonElement(text=PlainTextObject(text=text, emoji=True), url=link, action_id=action)
        for text, link, action in links
        if link and len(link) <= ButtonElement.url_max_length
    ]
    if buttons:
        blocks.append(ActionsBlock(elements=buttons))
    # to_dict() runs slack_sdk's validators, so a limit broken here raises before sending.
    return SlackMessage(
        text=_fallback_text(plain, url),
        blocks=tuple(block.to_dict() for block in blocks[:BLOCKS_MAX]),
    )


def render_plain(notice: Notice) -> PlainMessage:
    """Title and body for apprise: the same facts as the Slack message, as plain lines."""
    layout = _layout(notice, _PLAIN)
    lines: list[str] = []
    if layout.summary:
        lines.append(layout.summary)
    if layout.fields:
        lines.append("")
        lines.extend(f"{name}: {value}" for name, value in layout.fields)
    if layout.note:
        lines += ["", layout.note]
    if layout.details:
        lines += ["", layout.details]
    if layout.context:
        lines += ["", " · ".join(layout.context)]
    if notice.flow_run_url:
        lines.append(f"Flow run: {notice.flow_run_url}")
    model_url = _model_url(notice)
    if model_url:
        lines.append(f"Model: {model_url}")
    return PlainMessage(title=layout.title, body="\n".join(lines).strip(), level=layout.level)


def render_plain_slack(body: str, subject: str | None = None) -> SlackMessage:
    """A text-only Slack message for a body that is not a notice."""
    text = escape_mrkdwn(body)
    if subject:
        text = f"*{escape_mrkdwn(subject)}*\n{text}"
    return SlackMessage(text=_clip(text or "(empty notification)", 40_000))


# --- layouts per kind -----------------------------------------------------------------


def _layout(notice: Notice, fmt: _Format) -> _Layout:
    facts = notice.facts
    if isinstance(facts, ModelTrained):
        layout = _trained_layout(facts, fmt)
    elif isinstance(facts, RunFailure):
        layout = _failure_layout(notice, facts, fmt)
    elif isinstance(facts, DataRejected):
        layout = _rejected_layout(facts, fmt)
    else:
        layout = _missing_layout(facts, fmt)
    layout.context = _context(notice, fmt) + layout.context
    return layout


def _model_url(notice: Notice) -> str | None:
    facts = notice.facts
    return facts.model_url if isinstance(facts, ModelTrained) else None


def _trained_layout(facts: ModelTrained, fmt: _Format) -> _Layout:
    subject = _join(facts.taxi_type, facts.month)
    version = fmt.code(facts.model_version) if facts.model_version else "The challenger"
    champion = fmt.code(facts.champion_version) if facts.champion_version else "the champion"
    replaced = fmt.code(facts.replaced_version) if facts.replaced_version else champion
    first = facts.replaced_version is None and facts.champion_version is None
    first = first and facts.champion_rmse is None
    itself = facts.promoted is False and facts.model_version is not None
    itself = itself and facts.model_version == facts.champion_version
    if facts.promoted:
        title = f"{_PROMOTED_EMOJI} New champion"
        summary = f"{fmt.bold('Promoted')}: {version} is the " + (
            "first champion." if first else f"new champion, replacing {replaced}."
        )
    elif itself:
        title = f"{_EMOJI[NoticeKind.SUCCEEDED]} Model trained, same as production"
        summary = f"{fmt.bold('Not promoted')}: {version} already is production."
    elif facts.promoted is False:
        title = f"{_EMOJI[NoticeKind.SUCCEEDED]} Model trained, champion kept"
        summary = f"{fmt.bold('Not promoted')}: {champion} stays; {version} did not beat it."
    else:
        title = f"{_EMOJI[NoticeKind.SUCCEEDED]} Model trained"
        summary = ""
    # A first champion's reason ("first green model") only repeats the summary.
    if facts.promotion_reason and not (facts.promoted and first):
        summary = f"{summary} {fmt.text(facts.promotion_reason)}".strip()
    split = (
        f"{_count(facts.train_rows) or 'n/a'} / {_count(facts.val_rows) or 'n/a'}"
        if facts.train_rows is not None or facts.val_rows is not None
        else None
    )
    if facts.drifted:
        title = f"{title} \u00b7 drift"
        summary = f"{_drift_line(facts, fmt)} {summary}".strip()
    read_kept = (
        f"{_count(facts.rows_read)} / {_count(facts.rows_kept)}"
        if facts.rows_read is not None and facts.rows_kept is not None
        else None
    )
    fields = _fields(
        ("File", _code_or_none(facts.file or _file_name(facts.path), fmt)),
        ("Rows read / kept", read_kept) if read_kept else ("Rows kept", _count(facts.rows_kept)),
        ("Rows train / validation", split),
        ("RMSE challenger vs champion", _versus(facts.rmse, facts.champion_rmse)),
        ("MAE challenger vs champion", _versus(facts.mae, facts.champion_mae)),
        ("Model version", _code_or_none(facts.model_version, fmt)),
        ("Champion before", _code_or_none(facts.champion_version, fmt)),
        ("Promoted", _yes_no(facts.promoted)),
        ("Duration", _duration(facts.seconds)),
        ("Largest drift (PSI)", _largest_drift(facts.drift_psi)),
    )
    return _Layout(
        title=f"{title}: {subject}" if subject else title,
        level="warning" if facts.drifted else "success",
        summary=summary,
        fields=fields,
        note=_quality_note(facts),
    )


def _drift_line(facts: ModelTrained, fmt: _Format) -> str:
    psi = facts.drift_psi or {}
    named = ", ".join(f"{name} (PSI {psi.get(name, math.nan):.2f})" for name in facts.drifted or [])
    threshold = f" (threshold {facts.drift_threshold:g})" if facts.drift_threshold else ""
    return f"\u26a0\ufe0f {fmt.bold('Drift')} from the training months{threshold}: {named}."


def _largest_drift(psi: dict[str, float] | None) -> str | None:
    if not psi:
        return None
    name, value = max(psi.items(), key=lambda item: item[1])
    return f"{value:.3f} ({name})"


def _quality_note(facts: ModelTrained) -> str:
    """Missing values of the new month and the champion's decay, when known."""
    parts = []
    missing = {name: share for name, share in (facts.null_shares or {}).items() if share > 0}
    if facts.null_shares is not None:
        parts.append(
            "Missing values: "
            + (", ".join(f"{name} {share:.1%}" for name, share in missing.items()) or "none")
        )
    if facts.champion_own_rmse is not None and facts.champion_rmse is not None:
        parts.append(
            f"Champion RMSE {_number(facts.champion_rmse)} on this month vs "
            f"{_number(facts.champion_own_rmse)} on its own"
        )
    return " \u00b7 ".join(parts)


def _failure_layout(notice: Notice, facts: RunFailure, fmt: _Format) -> _Layout:
    what = notice.flow_name or "Flow run"
    title = f"{_EMOJI[notice.kind]} {what} {_RUN_VERB[notice.kind]}"
    run = fmt.code(notice.flow_run_name) if notice.flow_run_name else "A flow run"
    summary = f"{run} ended in state {fmt.bold(facts.state or notice.kind.value)}."
    if facts.failed_task:
        summary += f" Failing task: {fmt.code(facts.failed_task)}."
    fields = _fields(
        ("Flow run", _code_or_none(notice.flow_run_name, fmt)),
        ("Deployment", _code_or_none(notice.deployment_name, fmt)),
        ("Failed task", _code_or_none(facts.failed_task, fmt)),
        ("State", fmt.text(facts.state) if facts.state else None),
    )
    context = []
    scalars = [
        f"{name}={value}"
        for name, value in (facts.parameters or {}).items()
        if isinstance(value, str | int | float | bool)
    ][:5]
    if scalars:
        context.append("parameters: " + fmt.text(_clip(", ".join(scalars), 500)))
    return _Layout(
        title=title,
        level="failure",
        summary=summary,
        fields=fields,
        details=facts.message or "(no error message)",
        context=context,
    )


def _rejected_layout(facts: DataRejected, fmt: _Format) -> _Layout:
    name = _file_name(facts.path)
    title = f"{_EMOJI[NoticeKind.REJECTED]} File rejected"
    rule = fmt.bold(facts.rule) if facts.rule else "a data rule"
    summary = f"{fmt.code(name) if name else 'A month file'} broke {rule}"
    summary += f": {fmt.text(facts.detail)}" if facts.detail else "."
    note = f"What to do: {fmt.text(facts.hint)}" if facts.hint else ""
    fields = _fields(
        ("File", _code_or_none(name, fmt)),
        ("Rule", fmt.text(facts.rule) if facts.rule else None),
        ("Taxi type / month", fmt.text(_join(facts.taxi_type, facts.month)) or None),
        ("Moved to", _code_or_none(facts.quarantined_to, fmt)),
    )
    return _Layout(
        title=f"{title}: {name}" if name else title,
        level="warning",
        summary=summary,
        fields=fields,
        note=note,
    )


def _missing_layout(facts: MonthMissing, fmt: _Format) -> _Layout:
    subject = _join(facts.taxi_type, facts.expected_month)
    title = f"{_EMOJI[NoticeKind.MISSING_MONTH]} Missing month"
    if facts.taxi_type and facts.expected_month:
        expected = fmt.code(f"{facts.taxi_type}_tripdata_{facts.expected_month}.parquet")
        summary = f"No {expected} has arrived; retraining waits rather than use old data."
    else:
        summary = "An expected month file has not arrived; retraining waits."
    if facts.newest_month:
        summary += f" Newest month here: {fmt.text(facts.newest_month)}"
        summary += f", {facts.days_since} days ago." if facts.days_since is not None else "."
    fields = _fields(
        ("Taxi type", fmt.text(facts.taxi_type) if facts.taxi_type else None),
        ("Expected month", fmt.text(facts.expected_month) if facts.expected_month else None),
        ("Newest month seen", fmt.text(facts.newest_month) if facts.newest_month else None),
        ("Days since last file", _count(facts.days_since)),
        ("Watched folder", _code_or_none(facts.folder, fmt)),
    )
    return _Layout(
        title=f"{title}: {subject}" if subject else title,
        level="warning",
        summary=summary,
        fields=fields,
    )


def _context(notice: Notice, fmt: _Format) -> list[str]:
    parts = []
    if notice.flow_run_name and notice.kind not in _RUN_VERB:
        parts.append(f"flow run {fmt.code(notice.flow_run_name)}")
    if notice.deployment_name and notice.kind not in _RUN_VERB:
        parts.append(f"deployment {fmt.code(notice.deployment_name)}")
    if notice.occurred:
        parts.append(fmt.text(_when(notice.occurred)))
    return parts


# --- small formatting helpers ---------------------------------------------------------


def _fields(*pairs: tuple[str, str | None]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in pairs if value]


def _join(*parts: str | None) -> str:
    return " ".join(part for part in parts if part)


def _file_name(path: str | None) -> str | None:
    if not path:
        return None
    return PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name


def _code_or_none(value: str | None, fmt: _Format) -> str | None:
    return fmt.code(value) if value else None


def _count(value: int | None) -> str | None:
    return f"{value:,}" if value is not None else None


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}"


def _versus(challenger: float | None, champion: float | None) -> str | None:
    if challenger is None:
        return None if champion is None else f"n/a vs {_number(champion)}"
    if champion is None:
        return f"{_number(challenger)} (no champion yet)"
    delta = challenger - champion
    sign = "+" if delta >= 0 else "\u2212"
    return f"{_number(challenger)} vs {_number(champion)} ({sign}{abs(delta):.3f})"


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _duration(seconds: float | None) -> str | None:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _when(occurred: str) -> str:
    try:
        moment = datetime.fromisoformat(occurred.strip())
    except ValueError:
        return occurred
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=_clip(text, SectionBlock.text_max_length)))


def _fallback_text(plain: _Layout, url: str | None) -> str:
    text = plain.title
    if plain.summary:
        text += f" \u2014 {plain.summary}"
    if url:
        text += f" {url}"
    return _clip(text, _FALLBACK_TEXT_MAX)
