"""What a training run reports: the summary the CLI prints, and the artifacts the UI shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from taxiops.registry import ModelRegistry


class MonthRows(BaseModel):
    """Rows of one month file: read, dropped by each rule, kept."""

    month: str
    file: str
    sha256: str
    rows_read: int
    rows_kept: int
    dropped: dict[str, int]


class TrainingSummary(BaseModel):
    """The outcome of one training run; `taxiops train --json` prints it."""

    taxi_type: str
    month: str
    file: str
    train_months: list[str]
    rmse: float
    mae: float
    train_rows: int
    val_rows: int
    model_version: str
    promoted: bool
    promotion_reason: str
    production_version: str | None  # production after the decision
    replaced_version: str | None = None  # what a promotion replaced
    model_url: str | None = None  # the version's page in the MLflow UI
    mlflow_run_id: str | None = None
    champion_version: str | None
    champion_rmse: float | None
    champion_mae: float | None
    champion_own_rmse: float | None = None  # the champion's RMSE on its own validation month
    rows_read: int = 0  # of the new month, before the data rules
    rows_kept: int = 0
    null_shares: dict[str, float] = {}  # of the new month's columns read, before the rules
    drift_psi: dict[str, float] = {}  # per feature, the new month against the training months
    drifted: list[str] = []  # features with PSI >= drift_threshold, most drifted first
    drift_threshold: float = 0.1
    seconds: float  # the whole flow
    # Reading the files, and the time inside the tasks that load (validate, prepare), train
    # and evaluate: the scope of the course baseline's clock (`taxiops.pipeline.clock`).
    pipeline_seconds: float = 0.0
    flow_run_id: str | None
    cached_tasks: int
    total_tasks: int
    months: list[MonthRows]


def render_markdown(
    summary: TrainingSummary, chart_uri: str | None = None, history_uri: str | None = None
) -> str:
    """The markdown report artifact of a run. `chart_uri` is an image (`data:` URI) of the
    challenger's predicted against actual minutes on the validation month, `history_uri`
    one of RMSE by month for the recent challengers and production."""
    if summary.promoted:
        verdict = "promoted to production"
    elif summary.model_version == summary.champion_version:
        verdict = "already in production"
    else:
        verdict = "not promoted"
    lines = [
        f"# {summary.taxi_type} {summary.month}: challenger {summary.model_version} {verdict}",
        "",
        f"*{summary.promotion_reason}* — {summary.seconds:.2f} s, "
        f"{summary.cached_tasks}/{summary.total_tasks} tasks from cache.",
        "",
        f"Production after this run: {summary.production_version or 'none'}"
        + (f" (replacing {summary.replaced_version})" if summary.replaced_version else "")
        + (
            f" · [{summary.model_version} in MLflow]({summary.model_url})"
            if summary.model_url
            else ""
        )
        + ".",
        "",
        "## Scores on the validation month",
        "",
        "| model | RMSE (min) | MAE (min) |",
        "|---|---:|---:|",
        f"| challenger {summary.model_version} | {summary.rmse:.3f} | {summary.mae:.3f} |",
    ]
    if summary.champion_version is not None:
        lines.append(
            f"| champion at start {summary.champion_version} | {_num(summary.champion_rmse)} "
            f"| {_num(summary.champion_mae)} |"
        )
    else:
        lines.append("| champion | none yet | |")
    lines += [
        "",
        f"Trained on {', '.join(summary.train_months)} ({summary.train_rows:,} trips); "
        f"validated on {summary.month} ({summary.val_rows:,} trips).",
        "",
        "## Rows by month",
        "",
        "| month | file | read | kept | dropped |",
        "|---|---|---:|---:|---|",
    ]
    for month in summary.months:
        dropped = ", ".join(f"{rule}: {count:,}" for rule, count in month.dropped.items() if count)
        lines.append(
            f"| {month.month} | `{month.file}` | {month.rows_read:,} | {month.rows_kept:,} "
            f"| {dropped or 'none'} |"
        )
    lines += _quality_and_drift(summary)
    if chart_uri is not None:
        lines += ["", "## Predicted vs actual minutes", "", f"![predicted vs actual]({chart_uri})"]
    if history_uri is not None:
        lines += ["", "## RMSE by month", "", f"![RMSE by month]({history_uri})"]
    return "\n".join(lines) + "\n"


def _quality_and_drift(summary: TrainingSummary) -> list[str]:
    """Nulls of the new month, its drift from the training months, the champion's decay."""
    lines = ["", f"## Data quality and drift of {summary.month}", ""]
    if summary.drifted:
        lines += [
            f"**Drift** in {', '.join(summary.drifted)}: PSI at or past "
            f"{summary.drift_threshold:g} against {', '.join(summary.train_months)}.",
            "",
        ]
    else:
        lines += [f"No drift: every PSI below {summary.drift_threshold:g}.", ""]
    lines += ["| feature | PSI |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in summary.drift_psi.items()]
    lines += ["", "| column | missing |", "|---|---:|"]
    lines += [f"| {name} | {share:.2%} |" for name, share in summary.null_shares.items()]
    if summary.champion_own_rmse is not None and summary.champion_rmse is not None:
        lines += [
            "",
            f"Champion {summary.champion_version}: RMSE {summary.champion_rmse:.3f} on "
            f"{summary.month} against {summary.champion_own_rmse:.3f} on its own validation "
            f"month ({summary.champion_rmse - summary.champion_own_rmse:+.3f}).",
        ]
    return lines


def registry_table(registry: ModelRegistry, taxi_type: str) -> list[dict[str, Any]]:
    """One row per registered version, newest first, for the table artifact."""
    production = registry.production(taxi_type)
    rows = []
    for version in reversed(registry.versions(taxi_type)):
        card = version.card
        rows.append(
            {
                "version": version.name,
                "production": production is not None and production.number == version.number,
                "validation month": card.validation_month,
                "train months": ", ".join(card.train_months),
                "rmse": round(card.metrics["rmse"], 4),
                "mae": round(card.metrics["mae"], 4),
                "train rows": card.train_rows,
                "created": card.created_at,
            }
        )
    return rows


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
