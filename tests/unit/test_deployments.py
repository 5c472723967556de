"""The deployments, declared once: `prefect.yaml` and `taxiops up` serve the same ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from taxiops import names
from taxiops.pipeline.deployments import prefect_yaml, served_deployments
from taxiops.settings import Settings

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"


def default_settings() -> Settings:
    """The field defaults, whatever this process's environment or .env says."""
    return Settings.model_construct()


def test_committed_prefect_yaml_is_the_one_the_default_settings_write() -> None:
    assert PREFECT_YAML.read_text() == prefect_yaml(default_settings()), (
        "prefect.yaml is stale: run `env -i .venv/bin/python -m taxiops.pipeline.deployments"
        " > prefect.yaml`"
    )


def test_prefect_yaml_follows_the_schedule_and_limit_settings() -> None:
    settings = default_settings().model_copy(
        update={"schedule_cron": "30 4 3 * *", "schedule_timezone": "Europe/Oslo", "serve_limit": 5}
    )
    declared = {d["name"]: d for d in yaml.safe_load(prefect_yaml(settings))["deployments"]}
    assert declared[names.RETRAIN_DEPLOYMENT]["schedules"] == [
        {"cron": "30 4 3 * *", "timezone": "Europe/Oslo", "active": True}
    ]
    assert declared[names.TRAIN_DEPLOYMENT]["concurrency_limit"] == 5


async def test_served_deployments_match_prefect_yaml_and_load_from_any_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = default_settings()
    declared = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    served = await served_deployments(settings)
    assert sorted(d.name for d in served) == sorted(declared)
    monkeypatch.chdir(tmp_path)  # a flow-run subprocess may start anywhere
    for deployment in served:
        spec = declared[deployment.name]
        assert deployment.description == spec["description"]
        assert deployment.tags == spec["tags"]
        assert deployment.concurrency_limit == spec["concurrency_limit"]
        crons = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules or []]  # type: ignore[union-attr]
        assert crons == [(s["cron"], s["timezone"]) for s in spec.get("schedules", [])]
        assert deployment.entrypoint is not None
        path, _, name = deployment.entrypoint.partition(":")
        assert Path(path).is_absolute() and path.endswith(spec["entrypoint"].partition(":")[0])
        assert load_flow_from_entrypoint(deployment.entrypoint).fn.__name__ == name
