"""End to end: the web app and the HTTP API's documentation in a real (headless) browser.

Starts ``mri-tumor app`` on a free port, uploads a fixture image through the page's file
input in Debian's Chromium driven by Playwright, and reads the prediction off the page. A
screenshot is saved as ``artifacts/app-e2e.png``. At 900, 1280 and 1920 px wide, with both
shipped models, no result headline, model name or validation cell is cut (a cut shows only
as an element whose content is wider than its box: ``inner_text`` still reads it whole).
A file over the upload limit reaches the page and gets its own error card, and the first
session of a fresh server shows no "Deploy" button. Starts ``mri-tumor serve`` too, and opens
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
from typing import TYPE_CHECKING

import pytest

from mri_tumor.card import DISCLAIMER
from mri_tumor.data.reading import MAX_UPLOAD_BYTES

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

if TYPE_CHECKING:
    from playwright.sync_api import Page

FIXTURE = sorted((ROOT / "tests" / "fixtures" / "images" / "meningioma").glob("*.jpg"))[0]
SCREENSHOT = ROOT / "artifacts" / "app-e2e.png"
STARTUP_SECONDS = 90  # generous: CI runners share their cores
RESULT_MS = 90_000
WIDTHS = (900, 1280, 1920)
# The examples whose headlines were cut ("Pituitary tu...", "Meningi...", "Schwan...",
# "Papillo...", "T1C+ (9..."): by model, the chips' texts.
CUT_EXAMPLES = {"default": ["Pituitary tumor", "Meningioma"],
                "types": ["Meningioma · T1C+", "Schwannoma · T1C+",
                          "Papilloma (choroid plexus) · T1C+"]}
# Every element of the result headlines (st.metric: class, confidence, MR sequence), of the
# sidebar's model names and of its validation table (the table's box, and each cell).
CUT_CHECK = """() => {
  const all = (selector) => Array.from(document.querySelectorAll(selector));
  const cut = [];
  const counts = {headline: 0, selector: 0, table: 0};
  const check = (element, what) => {
    counts[what] += 1;
    if (element.scrollWidth > element.clientWidth) {
      cut.push(`${what}: "${element.innerText.trim().slice(0, 60)}" needs `
               + `${element.scrollWidth} px, has ${element.clientWidth}`);
    }
  };
  for (const e of all('[data-testid="stMetricValue"], [data-testid="stMetricValue"] *, '
                      + '[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] *')) {
    check(e, "headline");
  }
  for (const e of all('[data-testid="stSidebar"] [data-testid="stRadio"] label '
                      + '[data-testid="stMarkdownContainer"], '
                      + '[data-testid="stSidebar"] [data-testid="stRadio"] label p, '
                      + '[data-testid="stSidebar"] [data-testid="stSelectbox"] input')) {
    check(e, "selector");
  }
  for (const table of all('[data-testid="stSidebar"] table')) {
    check(table.parentElement, "table");
    for (const cell of table.querySelectorAll("th, td")) check(cell, "table");
  }
  return {cut, counts};
}"""

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
            deploy_buttons = page.locator('[data-testid="stAppDeployButton"]').count()
            pictures = [page.locator('[data-testid="stImage"] img').nth(i).bounding_box()
                        for i in range(page.locator('[data-testid="stImage"] img').count())]
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert label == expected.display_label
    assert FIXTURE.name in body
    # Streamlit's own cap ("200MB per file") is not shown beside the app's 50 MB limit.
    assert "MB per file" not in body and "up to 50 MB each" in body
    assert body.count(DISCLAIMER) >= 3  # page top, sidebar, and under the prediction
    assert SCREENSHOT.stat().st_size > 10_000
    assert deploy_buttons == 0  # the first session of this server: no "Deploy" button
    # The slice and its Grad-CAM side by side: one row, two places.
    assert len(pictures) == 2 and abs(pictures[0]["y"] - pictures[1]["y"]) < 2
    assert pictures[0]["x"] + pictures[0]["width"] <= pictures[1]["x"]


def _wait_for_results(page: Page, count: int) -> None:
    from playwright.sync_api import expect

    values = page.locator('[data-testid="stMetric"]', has_text="Predicted class")
    expect(values).to_have_count(count, timeout=RESULT_MS)
    expect(page.locator('[data-testid="stVegaLiteChart"] canvas, '
                        '[data-testid="stVegaLiteChart"] svg')).to_have_count(
        count, timeout=RESULT_MS)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)",
                           timeout=RESULT_MS)
    page.wait_for_timeout(500)  # the last layout pass


@pytest.mark.parametrize("width", WIDTHS)
def test_no_headline_model_name_or_validation_cell_is_cut(app_url: str, width: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    found: dict[str, dict] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1600})
            page.goto(app_url, timeout=RESULT_MS)
            for model, chips in CUT_EXAMPLES.items():
                choice = page.locator('[data-testid="stSidebar"] [data-testid="stRadio"] '
                                      "label", has_text=f"{model}:")
                choice.click(timeout=RESULT_MS)
                for chip in chips:
                    button = page.get_by_role("button", name=chip, exact=True)
                    expect(button).to_be_visible(timeout=RESULT_MS)
                    button.click()
                    page.wait_for_timeout(300)
                _wait_for_results(page, len(chips))
                found[model] = page.evaluate(CUT_CHECK)
                found[model]["deploy"] = page.locator(
                    '[data-testid="stAppDeployButton"]').count()
                for chip in chips:  # unpicked again: the next model starts from none
                    page.get_by_role("button", name=chip, exact=True).click()
                    page.wait_for_timeout(300)
        finally:
            browser.close()
    for model, result in found.items():
        counts = result["counts"]
        # Not vacuous: the headlines of every card, both models' names, the table's cells.
        assert counts["headline"] >= 4 * len(CUT_EXAMPLES[model]), (model, counts)
        assert counts["selector"] >= 2 and counts["table"] >= 9, (model, counts)
        assert result["cut"] == [], f"cut at {width} px with {model}: {result['cut']}"
        assert result["deploy"] == 0


def test_a_file_over_the_upload_limit_gets_its_own_error_card(app_url: str,
                                                              tmp_path: Path) -> None:
    """The uploader lets a 50 MB + 1 byte file through to the page, which refuses it on a
    card of its own and counts it as unreadable (it used to vanish into a tooltip)."""
    from playwright.sync_api import expect, sync_playwright

    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as file:
        file.truncate(MAX_UPLOAD_BYTES + 1)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(app_url, timeout=RESULT_MS)
            page.locator('input[type="file"]').first.set_input_files(
                [str(huge), str(FIXTURE)], timeout=RESULT_MS)
            error = page.locator('[data-testid="stAlertContentError"]',
                                 has_text="larger than the 50 MB limit")
            expect(error).to_be_visible(timeout=RESULT_MS)
            expect(page.get_by_text("2 images: 1 classified, 1 unreadable")).to_be_visible(
                timeout=RESULT_MS)
            expect(page.locator("h4", has_text="huge.jpg")).to_be_visible(timeout=RESULT_MS)
        finally:
            browser.close()


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
