"""The SVG charts (predicted vs actual, RMSE by month) are valid, self-contained documents."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from taxiops.ml import predicted_vs_actual_svg
from taxiops.ml.plots import svg_data_uri

SVG = "{http://www.w3.org/2000/svg}"


def test_svg_parses_and_draws_cells() -> None:
    rng = np.random.default_rng(0)
    actual = rng.uniform(1, 60, 1_000)
    svg = predicted_vs_actual_svg(
        actual, actual + rng.normal(0, 3, 1_000), title="green <2021-02> & co"
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    counts = [
        int(title.text.split()[0])
        for rect in root.iter(f"{SVG}rect")
        if (title := rect.find(f"{SVG}title")) is not None and title.text
    ]
    assert 20 < len(counts) <= 30 * 30
    assert sum(counts) == 1_000
    assert "green &lt;2021-02&gt; &amp; co" in svg
    assert "<script" not in svg


def test_empty_input_still_renders() -> None:
    ET.fromstring(predicted_vs_actual_svg([], []))


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        predicted_vs_actual_svg([1.0, 2.0], [1.0])


def test_data_uri_round_trips() -> None:
    svg = predicted_vs_actual_svg([5.0], [6.0])
    uri = svg_data_uri(svg)
    assert base64.b64decode(uri.split(",", 1)[1]).decode() == svg


def test_rmse_chart_has_a_point_per_version_and_breaks_production_where_there_was_none() -> None:
    from taxiops.ml.plots import rmse_by_month_svg

    svg = ET.fromstring(
        rmse_by_month_svg(
            ["2023-01 v1", "2023-02 v2", "2023-03 v3", "2023-04 v4"],
            [5.4, 5.2, 5.6, 5.0],
            [None, 5.5, None, 5.1],
            [True, True, False, True],
        )
    )
    ns = "{http://www.w3.org/2000/svg}"
    points = [(c.findtext(f"{ns}title"), c.get("fill")) for c in svg.iter(f"{ns}circle")]
    assert [fill == "white" for _, fill in points] == [False, False, True, False]
    assert points[2][0] == "2023-03 v3: challenger RMSE 5.600 (not promoted)"
    squares = [r.findtext(f"{ns}title") for r in svg.iter(f"{ns}rect") if r.find("*") is not None]
    assert squares == ["2023-02 v2: production RMSE 5.500", "2023-04 v4: production RMSE 5.100"]
    lines = [p.get("points", "").split() for p in svg.iter(f"{ns}polyline")]
    assert sorted(len(line) for line in lines) == [4]  # production has no two months in a row


def test_rmse_chart_without_versions_says_so_and_lengths_must_agree() -> None:
    from taxiops.ml.plots import rmse_by_month_svg

    assert "no versions yet" in rmse_by_month_svg([], [], [], [])
    with pytest.raises(ValueError, match="differ in length"):
        rmse_by_month_svg(["2023-01 v1"], [5.0, 6.0], [None], [True])
