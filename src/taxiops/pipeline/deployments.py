"""The two deployments, declared once: `taxiops up` serves them, `prefect.yaml` is written
from them (`python -m taxiops.pipeline.deployments > prefect.yaml`) for work pools."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import cloudpickle
import yaml
from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner
from prefect.schedules import Cron

from taxiops import names
from taxiops.pipeline.entrypoints import (
    RETRAIN_ENTRYPOINT,
    TRAIN_ENTRYPOINT,
    absolute_entrypoint,
    load_flow,
)
from taxiops.pipeline.warm_start import start_runs_warm
from taxiops.settings import Settings

# One monthly retrain at a time: two would judge the same months twice.
RETRAIN_CONCURRENCY = 1


@dataclass(frozen=True)
class DeploymentSpec:
    """What a deployment is, whoever runs it (the runner of `taxiops up` or a worker)."""

    name: str
    entrypoint: str
    description: str
    tags: tuple[str, ...]
    concurrency_limit: int
    cron: str | None = None
    timezone: str | None = None


def deployment_specs(settings: Settings) -> list[DeploymentSpec]:
    """The file-triggered training deployment and the monthly retrain schedule."""
    return [
        DeploymentSpec(
            name=names.TRAIN_DEPLOYMENT,
            entrypoint=TRAIN_ENTRYPOINT,
            description="Train a challenger when the watcher hands over a new month file.",
            tags=("taxiops", "file-triggered"),
            concurrency_limit=settings.serve_limit,
        ),
        DeploymentSpec(
            name=names.RETRAIN_DEPLOYMENT,
            entrypoint=RETRAIN_ENTRYPOINT,
            description="Retrain each taxi type on its newest month; fail on a missing month.",
            tags=("taxiops", "scheduled"),
            concurrency_limit=RETRAIN_CONCURRENCY,
            cron=settings.schedule_cron,
            timezone=settings.schedule_timezone,
        ),
    ]


async def served_flows(settings: Settings) -> list[tuple[Flow[..., Any], RunnerDeployment]]:
    """Each flow of `deployment_specs` with its deployment, ready for a runner."""
    served = []
    for spec in deployment_specs(settings):
        flow = load_flow(spec.entrypoint)
        deployment = await flow.ato_deployment(
            name=spec.name,
            description=spec.description,
            tags=list(spec.tags),
            concurrency_limit=spec.concurrency_limit,
            schedules=None if spec.cron is None else [Cron(spec.cron, timezone=spec.timezone)],
        )
        # Prefect records the flow's file relative to the cwd of this process; the runner's
        # flow-run subprocesses re-load it from there. Absolute, it loads from any cwd.
        deployment.entrypoint = absolute_entrypoint(spec.entrypoint)
        served.append((flow, deployment))
    return served


async def served_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The deployments of `deployment_specs`, ready for a runner."""
    return [deployment for _, deployment in await served_flows(settings)]


async def start_serving(settings: Settings) -> tuple[Runner, list[RunnerDeployment]]:
    """A runner holding both deployments (registered with the API): at most `serve_limit`
    runs at once, polling every `runner_poll_seconds` (the watcher of `taxiops up` also
    wakes it after each hand-off).

    With `warm_start`, the runner holds the flows in memory, as `Runner.add_flow` does, and
    starts their runs as forks of a warm process (`taxiops.pipeline.warm_start`); without
    it, each run is `python -m prefect.engine` loading the deployment's entrypoint."""
    runner = Runner(
        name="taxiops",
        query_seconds=settings.runner_poll_seconds,
        limit=settings.serve_limit,
        heartbeat_seconds=settings.heartbeat_seconds,
        pause_on_shutdown=False,
    )
    warm = settings.warm_start and start_runs_warm()
    deployments = []
    for flow, deployment in await served_flows(settings):
        deployment_id = await runner.aadd_deployment(deployment)
        if warm:
            # What `Runner.aadd_flow` does after `aadd_deployment`; that method would also
            # record the entrypoint relative to this process's cwd.
            runner._deployment_registry.register_flow(deployment_id, flow)
            # The runner pickles the flow for each run's process. Prefect loads a flow file
            # as a module named after it, or, loaded again (a restarted runner), as
            # `__prefect_loader_<hash>__`: a name no fresh process can import.
            cloudpickle.register_pickle_by_value(sys.modules[flow.fn.__module__])
        deployments.append(deployment)
    return runner, deployments


PREFECT_YAML_HEADER = f"""\
# Written by `python -m taxiops.pipeline.deployments > prefect.yaml` from the settings
# (TAXIOPS_SERVE_LIMIT, TAXIOPS_SCHEDULE_CRON, TAXIOPS_SCHEDULE_TIMEZONE,
# TAXIOPS_HEARTBEAT_SECONDS); the tests check
# that this file equals the one the default settings give. Edit the settings, not this file.
#
# Deployments for `prefect deploy --all` against any Prefect server with a
# `process` work pool named {names.WORK_POOL} (see README, "Team mode"; `taxiops server`
# creates the pool):
#
#   prefect deploy --all
#   prefect worker start --pool {names.WORK_POOL}
#
# `taxiops up` serves the same two deployments itself, under the same names
# (src/taxiops/names.py), without a work pool. Workers read TAXIOPS_* settings
# from their own environment or .env, like every other taxiops process.
#
# No pull section: `prefect deploy` records this checkout as the working
# directory, which is what a process worker on the same machine needs.
"""


def prefect_yaml(settings: Settings) -> str:
    """`prefect.yaml` declaring `deployment_specs(settings)` on the taxiops work pool."""
    deployments: list[dict[str, Any]] = []
    for spec in deployment_specs(settings):
        entry: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "entrypoint": spec.entrypoint,
            "tags": list(spec.tags),
            "concurrency_limit": spec.concurrency_limit,
        }
        if spec.cron is not None:
            entry["schedules"] = [{"cron": spec.cron, "timezone": spec.timezone, "active": True}]
        # The worker's flow-run processes beat as the runner of `taxiops up` makes its beat:
        # without heartbeats the server-side "silent run" automation never sees a worker die.
        entry["work_pool"] = {
            "name": names.WORK_POOL,
            "job_variables": {
                "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.heartbeat_seconds)}
            },
        }
        deployments.append(entry)
    body = {"name": "taxiops", "deployments": deployments}
    return PREFECT_YAML_HEADER + "\n" + str(yaml.safe_dump(body, sort_keys=False, width=100))


if __name__ == "__main__":
    from taxiops.settings import load_settings

    print(prefect_yaml(load_settings()), end="")
