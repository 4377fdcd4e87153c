"""Regenerate the web app's screenshot in the docs (docs/app-screenshot.png).

    python scripts/screenshot.py [--example meningioma] [--out docs/app-screenshot.png]

Starts ``mri-tumor app`` on the shipped model on a free port, opens it in headless Chromium
(Debian's ``/usr/bin/chromium``, driven by Playwright as in tests/test_browser.py: no
``playwright install``), picks one of the page's bundled examples, waits until its result
card is complete (class, chart, sources, heat map), saves the page down to that card as a
PNG, and stops the app. Needs the [test] extra (Playwright): ``make screenshot``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
# The browser test, the benchmark and this script start the app and Chromium the same way.
from app_speed import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    app_command,
    free_port,
    stop_app,
    wait_healthy,
)

from mri_tumor.card import ModelCard  # noqa: E402
from mri_tumor.inference.model_folder import SHIPPED_MODEL_DIR  # noqa: E402

SAMPLES = ROOT / "src" / "mri_tumor" / "samples"
STARTUP_SECONDS = 90
RESULT_MS = 90_000
VIEWPORT = {"width": 1400, "height": 2200}  # Streamlit scrolls inside its own container
MARGIN = 40  # pixels kept below the result card


def capture(url: str, label: str, out: Path) -> None:
    """Pick the example shown as ``label`` on the page at ``url`` and save the page to
    ``out`` once its result card is complete."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url, timeout=RESULT_MS)
            page.get_by_role("button", name=label, exact=True).click(timeout=RESULT_MS)
            metric = page.locator('[data-testid="stMetric"]', has_text="Predicted class")
            expect(metric).to_be_visible(timeout=RESULT_MS)
            expect(page.locator('[data-testid="stVegaLiteChart"] canvas, '
                                '[data-testid="stVegaLiteChart"] svg').first).to_be_visible(
                timeout=RESULT_MS)
            expect(page.get_by_text("Sources:")).to_be_visible(timeout=RESULT_MS)
            page.wait_for_function("Array.from(document.images).every(i => i.complete)",
                                   timeout=RESULT_MS)
            page.wait_for_timeout(1000)  # the chart's and the table's last paint
            # Down to the page's last element (the result card's disclaimer), not the blank
            # rest of the window.
            bottom = page.evaluate("""Math.max(...Array.from(document.querySelectorAll(
                '[data-testid="stMain"] [data-testid="stElementContainer"]'),
                e => e.getBoundingClientRect().bottom))""")
            height = min(VIEWPORT["height"], int(bottom) + MARGIN)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), clip={"x": 0, "y": 0,
                                                 "width": VIEWPORT["width"], "height": height})
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    examples = sorted(path.stem for path in SAMPLES.glob("*.jpg"))
    parser.add_argument("--example", choices=examples, default="meningioma",
                        help="the bundled example to pick (default meningioma)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "app-screenshot.png",
                        help="where to save the PNG (default docs/app-screenshot.png)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"needs Chromium at {CHROMIUM} (apt-get install -y chromium)", file=sys.stderr)
        return 2
    label = ModelCard.load(SHIPPED_MODEL_DIR).display_name(args.example)
    port = free_port()
    process = subprocess.Popen(app_command(port), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, STARTUP_SECONDS)
        capture(url, label, args.out)
    except (RuntimeError, TimeoutError) as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        stop_app(process)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
