"""The `taxiops` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from taxiops.errors import TaxiopsError

app = typer.Typer(
    help="Keep a NYC taxi trip-duration model fresh: drop a month file, get a model, hear about it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.command()
def train(
    new_file: Annotated[Path, typer.Argument(help="The month to evaluate on (and train for).")],
    train_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--train",
            help="A training month; repeat for several. Default: earlier months beside NEW_FILE.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON line.")
    ] = False,
) -> None:
    """Run the training flow once against the configured Prefect API."""
    from prefect.client.schemas.objects import State

    from taxiops.entrypoints import TRAIN_ENTRYPOINT, load_flow
    from taxiops.report import TrainingSummary

    train_flow = load_flow(TRAIN_ENTRYPOINT)
    state = cast(
        "State[TrainingSummary]",
        train_flow(
            new_file=str(new_file),
            train_files=None if train_file is None else [str(p) for p in train_file],
            return_state=True,
        ),
    )
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        message = str(error) if isinstance(error, BaseException) else (state.message or state.name)
        if as_json:
            print(json.dumps({"error": message, "state": state.name}))
        else:
            typer.secho(f"training failed: {message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    summary = state.result()
    if as_json:
        print(summary.model_dump_json(exclude={"months"}))
        return
    verdict = "promoted" if summary.promoted else "not promoted"
    champion = "none" if summary.champion_rmse is None else f"{summary.champion_rmse:.3f}"
    print(
        f"{summary.taxi_type} {summary.month}: {summary.model_version} RMSE {summary.rmse:.3f} "
        f"MAE {summary.mae:.3f} (champion {champion}) -> {verdict}; "
        f"{summary.seconds:.2f} s, {summary.cached_tasks}/{summary.total_tasks} tasks cached"
    )


@app.command()
def synth(
    folder: Annotated[Path, typer.Argument(help="Where to write the month files.")],
    months: Annotated[
        list[str] | None,
        typer.Option("--month", help="YYYY-MM; repeat for several. Default: 2023-01, 2023-02."),
    ] = None,
    taxi_type: Annotated[str, typer.Option("--type", help="green or yellow.")] = "green",
    rows: Annotated[int, typer.Option(help="Trips per month.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic TLC-schema month files (for demos and tests; never real data)."""
    from taxiops.ml import write_synth_month
    from taxiops.tripfile import TAXI_TYPES, Month

    if taxi_type not in TAXI_TYPES:
        raise typer.BadParameter(f"--type must be one of {', '.join(TAXI_TYPES)}")
    for index, text in enumerate(months or ["2023-01", "2023-02"]):
        path = write_synth_month(folder, taxi_type, Month.parse(text), rows=rows, seed=seed + index)
        print(path)


def main() -> None:
    """Console entry point: taxiops errors become one clear line and exit code 2."""
    try:
        app()
    except TaxiopsError as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.RED)
        sys.exit(2)
