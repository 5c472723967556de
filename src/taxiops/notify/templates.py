"""Jinja bodies for the automations' `send-notification` actions.

Each template renders a JSON object that `Notice.from_json` reads; the
`TaxiopsNotifier` block turns it into Block Kit. They run in Prefect's server-side
sandbox (`prefect.server.utilities.user_templates`), whose context holds `event`
(the triggering event, or None for proactive triggers) and, when a template names
them, `flow_run`, `flow` and `deployment` read from the API for the first
resource of that kind in the event (None when there is none). Its `tojson`
filter is Prefect's own: it serialises pydantic models and escapes `<>&'` as
`\\u00XX`, which is still valid JSON. Undefined values are chainable, so
`(x or "")` guards every lookup and ids pass through `|string` before `tojson`.
"""

from __future__ import annotations

from taxiops import names

# Shared lines: where the notice came from. `event` is None for proactive triggers.
_ORIGIN = """\
  "event": {{ (event.event or "")|tojson }},
  "event_id": {{ (event.id or "")|string|tojson }},
  "occurred": {{ (event.occurred or "")|string|tojson }},
  "flow_name": {{ (flow.name or "")|tojson }},
  "deployment_name": {{ (deployment.name or "")|tojson }},"""

# The custom events carry their facts in the payload; the flow run, if any, is a
# related resource added by `emit_event` inside a run.
_PAYLOAD_NOTICE = (
    "{\n"
    '  "kind": "%s",\n'
    + _ORIGIN
    + """
  "flow_run_id": {{ (flow_run.id or "")|string|tojson }},
  "flow_run_name": {{ (flow_run.name or "")|tojson }},
  "payload": {{ (event.payload or {})|tojson }}
}"""
)

TRAINED_BODY_TEMPLATE = _PAYLOAD_NOTICE % "succeeded"
"""Body for `taxiops.model.trained`; the payload is a `TrainingSummary` dump (`ModelTrained`)."""

REJECTED_BODY_TEMPLATE = _PAYLOAD_NOTICE % "rejected"
"""Body for `taxiops.data.rejected`; the payload is a `taxiops.payloads.DataRejected` dump."""

MISSING_MONTH_BODY_TEMPLATE = _PAYLOAD_NOTICE % "missing_month"
"""Body for `taxiops.month.missing`; the payload is a `taxiops.payloads.MonthMissing` dump."""

FAILURE_BODY_TEMPLATE = (
    """\
{%- set state = event.resource["prefect.state-name"] or flow_run.state.name or "Failed" -%}
{
  "kind": "{{ 'crashed' if state == 'Crashed' else 'timed_out' if state == 'TimedOut' \
else 'failed' }}",
  "state": {{ state|string|tojson }},
  "message": {{ (event.resource["prefect.state-message"] or flow_run.state.message or "")\
|string|tojson }},
"""
    + _ORIGIN
    + """
  "flow_run_id": {{ (flow_run.id or event.resource.id or "")|string|tojson }},
  "flow_run_name": {{ (flow_run.name or event.resource.name or "")|string|tojson }},
  "parameters": {{ (flow_run.parameters or {})|tojson }}
}"""
)
"""Body for `prefect.flow-run.Failed`, `.Crashed` and `.TimedOut`: the kind follows the state."""

SUBJECT_TEMPLATE = "taxiops: {{ flow_run.name or event.event or 'notification' }}"
"""Subject; used as the title only when a body is not a notice."""


def no_new_data_body_template(window_days: float) -> str:
    """Body for the proactive "no new data" trigger: it has no event, only the taxi-type label;
    its payload keys are fields of `taxiops.payloads.MonthMissing`."""
    return (
        "{\n"
        '  "kind": "missing_month",\n'
        '  "payload": {\n'
        f'    "taxi_type": {{{{ (labels["{names.TAXI_TYPE_LABEL}"] or "")|string|tojson }}}},\n'
        f'    "days_since": {window_days:g}\n'
        "  }\n"
        "}"
    )
