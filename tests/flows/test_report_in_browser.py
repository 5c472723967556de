"""The training report as a user sees it: the Prefect UI's artifact page, rendered by a
real headless Chromium (Debian's, driven by Playwright), shows both charts as images.

`make test` installs Chromium where it can (.ci/debian-packages.sh); where it cannot (not
root, no apt), this test is skipped with the command that installs it, except under
.ci/run, where it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from flows.train import train_duration_model
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from taxiops import names
from taxiops.app.server import LocalPrefectServer
from taxiops.settings import Settings

# No background traffic: on a closed network Chromium's own requests fail, many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> str:
    """Debian's chromium; skipped without it, unless TAXIOPS_TESTS_REQUIRE names it."""
    found = shutil.which("chromium")
    if found is None:
        why = "no chromium: `apt-get install chromium` (make test does, as root)"
        if "chromium" in os.environ.get("TAXIOPS_TESTS_REQUIRE", "").split(","):
            pytest.fail(why)
        pytest.skip(why)
    return found


def test_the_report_page_renders_both_charts(
    settings: Settings,
    months: dict[str, Path],
    prefect_server: LocalPrefectServer,
    chromium: str,
) -> None:
    from playwright.sync_api import sync_playwright

    train_duration_model(new_file=str(months["2023-01"]))
    summary = train_duration_model(new_file=str(months["2023-02"]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[names.REPORT_ARTIFACT]))
        )
    [report] = [a for a in artifacts if str(a.flow_run_id) == summary.flow_run_id]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            page.goto(f"{prefect_server.ui_url}/artifacts/artifact/{report.id}")
            heading = f"{summary.taxi_type} {summary.month}: challenger {summary.model_version}"
            page.get_by_text(heading).first.wait_for(timeout=30_000)
            sizes = {}
            for alt in ("predicted vs actual", "RMSE by month"):
                image = page.locator(f'img[alt="{alt}"]')
                image.wait_for(timeout=30_000)
                image.scroll_into_view_if_needed()
                page.wait_for_function(
                    "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
                )
                sizes[alt] = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            page.screenshot(path=str(settings.home / "report.png"), full_page=True)
        finally:
            browser.close()
    # The sizes the SVGs declare: the browser decoded both images.
    assert sizes == {"predicted vs actual": [360, 360], "RMSE by month": [560, 320]}
