"""The two deployments `taxiops up` serves; `prefect.yaml` declares the same for work pools."""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.runner import Runner
from prefect.schedules import Cron

from taxiops import names
from taxiops.pipeline.entrypoints import RETRAIN_ENTRYPOINT, TRAIN_ENTRYPOINT, load_flow
from taxiops.settings import Settings


async def served_deployments(settings: Settings) -> list[RunnerDeployment]:
    """The file-triggered training deployment and the monthly retrain schedule."""
    train = await load_flow(TRAIN_ENTRYPOINT).ato_deployment(
        name=names.TRAIN_DEPLOYMENT,
        description="Train a challenger when the watcher hands over a new month file.",
        tags=["taxiops", "file-triggered"],
    )
    retrain = await load_flow(RETRAIN_ENTRYPOINT).ato_deployment(
        name=names.RETRAIN_DEPLOYMENT,
        description="Retrain each taxi type on its newest month; fail on a missing month.",
        tags=["taxiops", "scheduled"],
        schedules=[Cron(settings.schedule_cron, timezone=settings.schedule_timezone)],
    )
    return [train, retrain]


async def start_serving(settings: Settings) -> tuple[Runner, list[RunnerDeployment]]:
    """A runner holding both deployments (registered with the API): at most `serve_limit`
    runs at once, polling every `runner_poll_seconds` so a handed-off file starts at once."""
    runner = Runner(
        name="taxiops",
        query_seconds=settings.runner_poll_seconds,
        limit=settings.serve_limit,
        heartbeat_seconds=settings.heartbeat_seconds,
        pause_on_shutdown=False,
    )
    deployments = await served_deployments(settings)
    for deployment in deployments:
        await runner.aadd_deployment(deployment)
    return runner, deployments
