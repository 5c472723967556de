"""Small self-contained SVG charts (no plotting library), for Markdown reports."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt

_WIDTH = 360
_HEIGHT = 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 16, 32, 44
_LOW = (239, 243, 255)  # colour of one trip
_HIGH = (8, 48, 107)  # colour of the busiest cell


def predicted_vs_actual_svg(
    actual: npt.ArrayLike,
    predicted: npt.ArrayLike,
    *,
    bins: int = 30,
    max_minutes: float = 60.0,
    title: str = "Predicted vs actual trip minutes",
) -> str:
    """A binned scatter (2-D histogram, log colour scale) of predicted against actual minutes.

    Values beyond `max_minutes` are drawn in the last bin. The dashed line is
    a perfect prediction. Returns the SVG document as a string.
    """
    truth = np.clip(np.asarray(actual, dtype=np.float64), 0, max_minutes)
    guess = np.clip(np.asarray(predicted, dtype=np.float64), 0, max_minutes)
    if truth.shape != guess.shape:
        raise ValueError(f"actual and predicted differ in shape: {truth.shape} vs {guess.shape}")
    edges = np.linspace(0, max_minutes, bins + 1)
    counts, _, _ = np.histogram2d(truth, guess, bins=(edges, edges))
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    cell_w, cell_h = plot_w / bins, plot_h / bins
    top = float(np.log1p(counts.max())) if counts.size and counts.max() > 0 else 1.0

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
        f'<text x="{_WIDTH / 2:.0f}" y="18" text-anchor="middle" font-size="13">'
        f"{escape(title)}</text>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#999"/>',
    ]
    for i, j in zip(*np.nonzero(counts), strict=True):
        share = float(np.log1p(counts[i, j])) / top
        colour = "#" + "".join(
            f"{round(lo + (hi - lo) * share):02x}" for lo, hi in zip(_LOW, _HIGH, strict=True)
        )
        x = _LEFT + i * cell_w
        y = _TOP + plot_h - (j + 1) * cell_h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w:.2f}" height="{cell_h:.2f}" '
            f'fill="{colour}"><title>{int(counts[i, j])} trips</title></rect>'
        )
    parts.append(
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP}" '
        'stroke="#d62728" stroke-dasharray="4 3"/>'
    )
    for tick in np.linspace(0, max_minutes, 5):
        share = tick / max_minutes
        x = _LEFT + share * plot_w
        y = _TOP + plot_h - share * plot_h
        parts.append(
            f'<text x="{x:.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle">{tick:g}</text>'
        )
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts += [
        f'<text x="{_LEFT + plot_w / 2:.0f}" y="{_HEIGHT - 10}" text-anchor="middle">'
        "actual minutes</text>",
        f'<text transform="translate(14 {_TOP + plot_h / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">predicted minutes</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    """The SVG as a `data:` URI, for Markdown `![alt](uri)` where inline SVG is stripped."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


_CHALLENGER = "#1f77b4"
_CHAMPION = "#ff7f0e"
_CHART_W, _CHART_H = 560, 320
_CHART_LEFT, _CHART_RIGHT, _CHART_TOP, _CHART_BOTTOM = 52, 16, 52, 78


def rmse_by_month_svg(
    labels: Sequence[str],
    challenger_rmse: Sequence[float],
    champion_rmse: Sequence[float | None],
    promoted: Sequence[bool],
    *,
    title: str = "RMSE by month",
) -> str:
    """A line chart, one point per label in order: each challenger's RMSE on its month
    (filled where it was promoted, hollow where not) and production's RMSE on the same
    month (a gap where there was no production model). Returns the SVG document."""
    if not len(labels) == len(challenger_rmse) == len(champion_rmse) == len(promoted):
        raise ValueError("labels, challenger_rmse, champion_rmse and promoted differ in length")
    values = [*challenger_rmse, *(v for v in champion_rmse if v is not None)]
    low, high = (float(np.floor(min(values))), float(np.ceil(max(values)))) if values else (0, 1)
    high = max(high, low + 1)
    plot_w = _CHART_W - _CHART_LEFT - _CHART_RIGHT
    plot_h = _CHART_H - _CHART_TOP - _CHART_BOTTOM
    step = plot_w / max(len(labels), 1)

    def x(i: int) -> float:
        return _CHART_LEFT + step * (i + 0.5)

    def y(value: float) -> float:
        return _CHART_TOP + plot_h - (value - low) / (high - low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_W}" height="{_CHART_H}" '
        f'viewBox="0 0 {_CHART_W} {_CHART_H}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{_CHART_W}" height="{_CHART_H}" fill="white"/>',
        f'<text x="{_CHART_W / 2:.0f}" y="18" text-anchor="middle" font-size="13">'
        f"{escape(title)}</text>",
        _legend_item(_CHART_LEFT, "challenger (filled: promoted)", _CHALLENGER),
        _legend_item(_CHART_LEFT + 230, "production on the same month", _CHAMPION),
        f'<rect x="{_CHART_LEFT}" y="{_CHART_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#999"/>',
    ]
    for tick in np.linspace(low, high, 5):
        parts.append(
            f'<text x="{_CHART_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<text transform="translate(14 {_CHART_TOP + plot_h / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">RMSE (minutes)</text>'
    )
    if not labels:
        parts.append(
            f'<text x="{_CHART_LEFT + plot_w / 2:.0f}" y="{_CHART_TOP + plot_h / 2:.0f}" '
            'text-anchor="middle">no versions yet</text>'
        )
    parts += _polylines([(x(i), y(v)) for i, v in enumerate(challenger_rmse)], _CHALLENGER)
    champion_points = [None if v is None else (x(i), y(v)) for i, v in enumerate(champion_rmse)]
    parts += _polylines(champion_points, _CHAMPION)
    for i, label in enumerate(labels):
        bottom = _CHART_TOP + plot_h + 12
        parts.append(
            f'<text transform="translate({x(i):.1f} {bottom}) rotate(-35)" '
            f'text-anchor="end">{escape(label)}</text>'
        )
        verdict = "promoted" if promoted[i] else "not promoted"
        fill = _CHALLENGER if promoted[i] else "white"
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(challenger_rmse[i]):.1f}" r="4" fill="{fill}" '
            f'stroke="{_CHALLENGER}" stroke-width="2"><title>{escape(label)}: challenger '
            f"RMSE {challenger_rmse[i]:.3f} ({verdict})</title></circle>"
        )
        champion = champion_rmse[i]
        if champion is not None:
            parts.append(
                f'<rect x="{x(i) - 3.5:.1f}" y="{y(champion) - 3.5:.1f}" width="7" height="7" '
                f'fill="{_CHAMPION}"><title>{escape(label)}: production RMSE '
                f"{champion:.3f}</title></rect>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def _legend_item(left: float, text: str, colour: str) -> str:
    return (
        f'<line x1="{left}" y1="34" x2="{left + 18}" y2="34" stroke="{colour}" stroke-width="2"/>'
        f'<text x="{left + 24}" y="38">{escape(text)}</text>'
    )


def _polylines(points: Sequence[tuple[float, float] | None], colour: str) -> list[str]:
    """One polyline per run of consecutive points; None breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            runs.append([])
        else:
            runs[-1].append(point)
    return [
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
        + " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
        + '"/>'
        for run in runs
        if len(run) > 1
    ]
