"""Small self-contained SVG charts (no plotting library), for Markdown reports."""

from __future__ import annotations

import base64
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
