"""Automations declared in `automations/*.yaml`, applied idempotently to a Prefect server.

Each YAML file is a Prefect automation (name, description, trigger, and any
Prefect `actions`) plus one taxiops key, `notify: <notice kind>`, which adds a
`send-notification` action on the taxiops notifier block with the body template
of that kind (`taxiops.notify.templates`). `${name}` placeholders are filled
from settings.

Applying is keyed on the automation's name, which the file's name gives
(`automation_name`): a missing one is created, a changed one updated, an unchanged
one left alone, and extra copies, and taxiops automations no file declares, deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import PrefectClient
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore

from taxiops import names
from taxiops.bundled import bundled_root
from taxiops.errors import AutomationSpecError
from taxiops.notify import templates
from taxiops.settings import Settings

AUTOMATIONS_DIR = bundled_root() / "automations"


def body_templates(settings: Settings) -> dict[str, str]:
    """The notification body of each `notify:` kind."""
    return {
        "succeeded": templates.TRAINED_BODY_TEMPLATE,
        "failed": templates.FAILURE_BODY_TEMPLATE,
        "rejected": templates.REJECTED_BODY_TEMPLATE,
        "missing_month": templates.MISSING_MONTH_BODY_TEMPLATE,
        "no_new_data": templates.no_new_data_body_template(settings.missing_data_days),
    }


def load_automations(
    settings: Settings, notifier_id: UUID, folder: Path = AUTOMATIONS_DIR
) -> list[AutomationCore]:
    """Every automation in `folder`, sending through the notifier block `notifier_id`."""
    values = {
        "train_flow": names.TRAIN_FLOW,
        "retrain_flow": names.RETRAIN_FLOW,
        "missing_data_seconds": f"{settings.missing_data_days * 86_400:g}",
        "silent_run_seconds": f"{settings.silent_run_seconds:g}",
    }
    bodies = body_templates(settings)
    found = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            spec: dict[str, Any] = yaml.safe_load(Template(path.read_text()).substitute(values))
        except (KeyError, ValueError, yaml.YAMLError) as exc:
            raise AutomationSpecError(path, f"cannot read: {exc}") from exc
        kind = spec.pop("notify", None)
        actions: list[Any] = list(spec.get("actions") or [])
        if kind is not None:
            if kind not in bodies:
                raise AutomationSpecError(
                    path, f"notify must be one of {sorted(bodies)}, got {kind!r}"
                )
            actions.append(
                SendNotification(
                    block_document_id=notifier_id,
                    subject=templates.SUBJECT_TEMPLATE,
                    body=bodies[kind],
                )
            )
        if not actions:
            raise AutomationSpecError(path, "needs `notify: <kind>` or `actions:`")
        spec["actions"] = actions
        try:
            automation = AutomationCore.model_validate(spec)
        except ValueError as exc:
            raise AutomationSpecError(path, str(exc)) from exc
        if automation.name != automation_name(path):
            raise AutomationSpecError(
                path,
                f"name must be {automation_name(path)!r} (the file's name), not {automation.name!r}",
            )
        found.append(automation)
    return found


MANAGED_PREFIX = "taxiops / "
"""Automations whose name starts with this are taxiops's: applying removes those no file declares."""


def automation_name(path: Path) -> str:
    """The name the automation in `path` must have, so file, UI and README agree:
    `no-new-data.yaml` declares `taxiops / no new data`."""
    return MANAGED_PREFIX + path.stem.replace("-", " ")


@dataclass
class ApplyReport:
    """What `apply_automations` did, by automation name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    duplicates_deleted: int = 0


async def apply_automations(client: PrefectClient, wanted: list[AutomationCore]) -> ApplyReport:
    """Make the server hold exactly one automation per wanted name, equal to the file, and
    no taxiops automation that no file declares any more (a renamed or deleted file)."""
    report = ApplyReport()
    wanted_names = {automation.name for automation in wanted}
    for stale in await client.read_automations():
        if stale.name.startswith(MANAGED_PREFIX) and stale.name not in wanted_names:
            await client.delete_automation(stale.id)
            report.removed.append(stale.name)
    for automation in wanted:
        existing = await client.read_automations_by_name(automation.name)
        for extra in existing[1:]:
            await client.delete_automation(extra.id)
            report.duplicates_deleted += 1
        if not existing:
            await client.create_automation(automation)
            report.created.append(automation.name)
        elif _comparable(existing[0]) != _comparable(automation):
            await client.update_automation(existing[0].id, automation)
            report.updated.append(automation.name)
        else:
            report.unchanged.append(automation.name)
    return report


def _comparable(automation: AutomationCore) -> Any:
    dumped = AutomationCore.model_validate(automation.model_dump()).model_dump(
        mode="json", exclude={"owner_resource"}
    )
    return _order_free(dumped)


def _order_free(value: Any) -> Any:
    """Sets (`expect`, `after`, `for_each`) come back from the server in another order."""
    if isinstance(value, dict):
        return {key: _order_free(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_order_free(item) for item in value]
        return sorted(items) if all(isinstance(item, str) for item in items) else items
    return value


async def set_up_alerting(
    client: PrefectClient,
    settings: Settings,
    ui_url: str | None,
    *,
    slack_webhook_url: str | None = None,
    folder: Path = AUTOMATIONS_DIR,
) -> ApplyReport:
    """Save the notifier block from settings and apply every automation file to it."""
    from taxiops.notify import save_notifier

    notifier_id = await save_notifier(settings, ui_url, slack_webhook_url=slack_webhook_url)
    return await apply_automations(client, load_automations(settings, notifier_id, folder))
