"""The promotion rule: when a challenger may replace the champion, and why, in words."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taxiops.ml import Metrics
    from taxiops.registry._store import ModelVersion


def should_promote(challenger: Metrics, champion: Metrics | None) -> bool:
    """A challenger replaces the champion only when its RMSE is no worse on the same month."""
    return champion is None or challenger.rmse <= champion.rmse


def validation_month_of(version: ModelVersion) -> str:
    """`YYYY-MM` of the month a version was judged on (labels may say "(validation)")."""
    return version.card.validation_month[:7]


def is_backfill(challenger: ModelVersion, champion: ModelVersion) -> bool:
    """Whether the challenger was judged on an older month than the champion was: a model
    for a late-arriving old month must not replace one built for newer data."""
    return validation_month_of(challenger) < validation_month_of(champion)


def is_same_training(challenger: ModelVersion, champion: ModelVersion) -> bool:
    """Whether both came from the same training (judged on different bytes of a month, as
    after a replaced file): promoting would post a new champion with the old weights."""
    key = challenger.card.training_key
    return bool(key) and key == champion.card.training_key


def judge(
    challenger: ModelVersion,
    metrics: Metrics,
    champion: ModelVersion | None,
    champion_metrics: Metrics | None,
) -> tuple[bool, str]:
    """The promotion rule, and its reason in words: no champion yet, or not a backfill, not
    the champion's own training again, and an RMSE no worse than the champion's on the same
    month (the reason says better, worse or equal, and by how much)."""
    if champion is None or champion_metrics is None:
        return True, f"first {challenger.taxi_type} model"
    if is_backfill(challenger, champion):
        return False, (
            f"{validation_month_of(challenger)} is older than {champion.name}'s month "
            f"{validation_month_of(champion)}: a backfill never replaces production"
        )
    if is_same_training(challenger, champion):
        return False, (
            f"the same training as {champion.name} (same months' bytes, parameters and "
            f"code), so the same model: production unchanged; "
            + rmse_comparison(metrics.rmse, champion.name, champion_metrics.rmse)
        )
    return (
        should_promote(metrics, champion_metrics),
        rmse_comparison(metrics.rmse, champion.name, champion_metrics.rmse),
    )


def rmse_comparison(rmse: float, champion_name: str, champion_rmse: float) -> str:
    """The challenger's RMSE against the champion's in words: better, worse or equal, and by
    how much (to three decimals, as both are shown)."""
    delta = rmse - champion_rmse
    if delta == 0:
        return f"RMSE {rmse:.3f} equals {champion_name}'s {champion_rmse:.3f}"
    word = "better" if delta < 0 else "worse"
    gap = f"{abs(delta):.3f}" if abs(delta) >= 0.0005 else "less than 0.001"
    return f"RMSE {rmse:.3f} is {word} than {champion_name}'s {champion_rmse:.3f} by {gap}"
