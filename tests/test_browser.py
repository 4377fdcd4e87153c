"""End to end: the web app and the HTTP API's documentation in a real (headless) browser.

Starts ``mri-tumor app`` on a free port, uploads a fixture image through the page's file
input in Debian's Chromium driven by Playwright, and reads the prediction off the page. A
screenshot is saved as ``artifacts/app-e2e.png``. Starts ``mri-tumor serve`` too, and opens
its ``/docs`` and ``/redoc`` with every request to another host blocked (as on a hospital
network without internet). Needs ``/usr/bin/chromium`` (``apt-get install chromium``);
skipped without it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mri_tumor.card import DISCLAIMER

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
# The benchmark and this test start the app and Chromium the same way.
from app_speed import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    app_command,
    free_port,
    stop_app,
    wait_healthy,
)

FIXTURE = sorted((ROOT / "tests" / "fixtures" / "images" / "meningioma").glob("*.jpg"))[0]
SCREENSHOT = ROOT / "artifacts" / "app-e2e.png"
STARTUP_SECONDS = 90  # generous: CI runners share their cores
RESULT_MS = 90_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium "
                                       "(apt-get install -y chromium)")


@contextmanager
def _running(command: list[str], port: int, health: str) -> Iterator[str]:
    """Run ``command`` (listening on ``port``) until the block ends; yields its base URL."""
    # Own process group: `mri-tumor app` starts streamlit as a child, and the teardown
    # must stop both (this group holds only the processes this fixture started).
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, STARTUP_SECONDS, health)
        yield url
    finally:
        stop_app(process)


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    port = free_port()
    with _running(app_command(port), port, "/_stcore/health") as url:
        yield url


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    port = free_port()
    script = Path(sys.executable).with_name("mri-tumor")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "mri_tumor"]
    command = [*base, "serve", "--port", str(port)]
    with _running(command, port, "/healthz") as url:
        yield url


def test_upload_in_browser_shows_prediction(app_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from mri_tumor import Predictor

    expected = Predictor.load().predict([FIXTURE])[0]
    assert expected.status == "ok"
    SCREENSHOT.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            # Tall enough for the whole page: Streamlit scrolls inside its own container,
            # which a full-page screenshot would not unroll.
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(app_url, timeout=RESULT_MS)
            page.locator('input[type="file"]').first.set_input_files(str(FIXTURE),
                                                                     timeout=RESULT_MS)
            metric = page.locator('[data-testid="stMetric"]', has_text="Predicted class")
            expect(metric).to_be_visible(timeout=RESULT_MS)
            label = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
            # The result card is complete once its chart, sources and disclaimer are there.
            expect(page.locator('[data-testid="stVegaLiteChart"] canvas, '
                                '[data-testid="stVegaLiteChart"] svg').first).to_be_visible(
                timeout=RESULT_MS)
            expect(page.get_by_text("Sources:")).to_be_visible(timeout=RESULT_MS)
            page.wait_for_function("Array.from(document.images).every(i => i.complete)",
                                   timeout=RESULT_MS)
            body = page.locator("body").inner_text()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert label == expected.display_label
    assert FIXTURE.name in body
    assert body.count(DISCLAIMER) >= 3  # page top, sidebar, and under the prediction
    assert SCREENSHOT.stat().st_size > 10_000


def test_api_docs_render_without_internet(api_url: str) -> None:
    """/docs (Swagger UI) and /redoc work with every other host unreachable, and try none."""
    from playwright.sync_api import Route, expect, sync_playwright

    outside: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(api_url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", local_only)
            page = context.new_page()
            page.goto(f"{api_url}/docs", timeout=RESULT_MS)
            operation = page.locator(".opblock-summary-path", has_text="/v1/predict")
            expect(operation.first).to_be_visible(timeout=RESULT_MS)
            expect(page.locator(".opblock-summary-path", has_text="/v1/model").first
                   ).to_be_visible(timeout=RESULT_MS)
            page.goto(f"{api_url}/redoc", timeout=RESULT_MS)
            expect(page.locator("h1", has_text="MRI tumour classifier API").first
                   ).to_be_visible(timeout=RESULT_MS)
            expect(page.get_by_text("Classify MRI slices").first).to_be_visible(
                timeout=RESULT_MS)
            redoc_text = page.locator("body").inner_text()
        finally:
            browser.close()
    assert DISCLAIMER in redoc_text
    assert outside == [], f"the documentation tried to reach {outside}"
