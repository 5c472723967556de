"""The two deployments `taxiops up` serves; `prefect.yaml` declares the same for work pools."""

from __future__ import annotations

from typing import cast

from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner
from prefect.schedules import Cron

from taxiops import events
from taxiops.entrypoints import RETRAIN_ENTRYPOINT, TRAIN_ENTRYPOINT, load_flow
from taxiops.settings import Settings


def served_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The file-triggered training deployment and the monthly retrain schedule."""
    train = load_flow(TRAIN_ENTRYPOINT).to_deployment(
        name=events.TRAIN_DEPLOYMENT,
        description="Train a challenger when the watcher hands over a new month file.",
        tags=["taxiops", "file-triggered"],
    )
    retrain = load_flow(RETRAIN_ENTRYPOINT).to_deployment(
        name=events.RETRAIN_DEPLOYMENT,
        description="Retrain each taxi type on its newest month; fail on a missing month.",
        tags=["taxiops", "scheduled"],
        schedules=[Cron(settings.schedule_cron, timezone=settings.schedule_timezone)],
    )
    # `to_deployment` is sync-compatible: called from sync code it returns the deployment.
    return [cast(RunnerDeployment, train), cast(RunnerDeployment, retrain)]


def build_runner(settings: Settings) -> Runner:
    """A runner executing at most `serve_limit` runs at once, polling briskly for new ones."""
    runner = Runner(
        name="taxiops",
        query_seconds=settings.runner_poll_seconds,
        limit=settings.serve_limit,
        heartbeat_seconds=settings.heartbeat_seconds,
        pause_on_shutdown=False,
    )
    for deployment in served_deployments(settings):
        runner.add_deployment(deployment)
    return runner
