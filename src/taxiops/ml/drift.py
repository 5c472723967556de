"""Data drift of a new month against the training months: PSI per feature.

The population stability index (PSI) of a feature compares the share of rows in each bin
of the reference (training) months with the new month's: sum((a - e) * ln(a / e)). Bins:
deciles of the reference for trip distance and duration, the 24 hours for the pickup hour,
and for each zone column the reference's 20 busiest zones plus one bin for all others.
Shares are floored at 0.0001, so an empty bin does not make it infinite. Each side is
read at up to `SAMPLE_ROWS` evenly spread rows. A feature whose PSI reaches the threshold
has drifted (default 0.1, Evidently's; `TAXIOPS_DRIFT_PSI_THRESHOLD` in a run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from taxiops.ml.schema import DO_LOCATION, PU_LOCATION, TRIP_DISTANCE

DRIFT_THRESHOLD = 0.1
PICKUP_HOUR = "pickup hour"
DURATION = "duration"
SAMPLE_ROWS = 500_000  # per side; a bin's share then errs by well under 0.001
_DECILES = np.linspace(0.0, 1.0, 11)[1:-1]
_TOP_ZONES = 20
_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftReport:
    """PSI of each feature of a new month against the training months."""

    psi: dict[str, float]
    threshold: float = DRIFT_THRESHOLD

    @property
    def drifted(self) -> list[str]:
        """The features whose PSI is at or past the threshold, most drifted first."""
        over = [(value, name) for name, value in self.psi.items() if value >= self.threshold]
        return [name for _, name in sorted(over, reverse=True)]


def compare_months(
    reference: list[pd.DataFrame], current: pd.DataFrame, threshold: float = DRIFT_THRESHOLD
) -> DriftReport:
    """PSI of `current`'s features against `reference`'s (prepared trips frames, see
    `PreparedTrips`)."""
    names = (TRIP_DISTANCE, DURATION, PICKUP_HOUR, PU_LOCATION, DO_LOCATION)
    per_month = max(1, SAMPLE_ROWS // max(len(reference), 1))
    ref_frames = [_every_nth(f, per_month) for f in reference]
    ref = {name: np.concatenate([_feature(f, name) for f in ref_frames]) for name in names}
    sample = _every_nth(current, SAMPLE_ROWS)
    new = {name: _feature(sample, name) for name in names}
    psi: dict[str, float] = {}
    for name in (TRIP_DISTANCE, DURATION):
        edges = np.unique(np.quantile(ref[name], _DECILES))
        psi[name] = population_stability(
            _shares(np.searchsorted(edges, ref[name], side="right"), len(edges) + 1),
            _shares(np.searchsorted(edges, new[name], side="right"), len(edges) + 1),
        )
    psi[PICKUP_HOUR] = population_stability(
        _shares(ref[PICKUP_HOUR], 24), _shares(new[PICKUP_HOUR], 24)
    )
    for name in (PU_LOCATION, DO_LOCATION):
        busiest = pd.Series(ref[name]).value_counts().index[:_TOP_ZONES].to_numpy()
        psi[name] = population_stability(
            _shares(_zone_bins(ref[name], busiest), len(busiest) + 1),
            _shares(_zone_bins(new[name], busiest), len(busiest) + 1),
        )
    return DriftReport({name: round(value, 4) for name, value in psi.items()}, threshold)


def population_stability(
    expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]
) -> float:
    """PSI of two share vectors over the same bins (floored at 0.0001)."""
    e = np.maximum(expected, _FLOOR)
    a = np.maximum(actual, _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _shares(bins: npt.NDArray[Any], count: int) -> npt.NDArray[np.float64]:
    counts = np.bincount(bins, minlength=count).astype(np.float64)
    shares: npt.NDArray[np.float64] = counts / max(counts.sum(), 1.0)
    return shares


def _zone_bins(zones: npt.NDArray[Any], busiest: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The index of each zone among `busiest` (not empty), or `len(busiest)` for any other."""
    order = np.argsort(busiest)
    in_order = busiest[order]
    position = np.clip(np.searchsorted(in_order, zones), 0, len(busiest) - 1)
    return np.where(in_order[position] == zones, order[position], len(busiest))


def _every_nth(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most about `limit` rows, evenly spread (every n-th, so the same rows each time)."""
    step = -(-len(frame) // limit) if len(frame) > limit else 1
    return frame.iloc[::step]


def _feature(frame: pd.DataFrame, name: str) -> npt.NDArray[Any]:
    if name == PICKUP_HOUR:
        micros = frame["pickup_datetime"].to_numpy().astype("datetime64[us]").view(np.int64)
        return np.asarray((micros // 3_600_000_000) % 24)
    return np.asarray(frame[name].to_numpy())
