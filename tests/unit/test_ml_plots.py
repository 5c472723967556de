"""The predicted-vs-actual SVG is a valid, self-contained document."""

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
