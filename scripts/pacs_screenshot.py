"""Regenerate the PACS screenshot in the docs (docs/pacs-orthanc.png).

    .venv/bin/python scripts/pacs_screenshot.py [--out docs/pacs-orthanc.png]

Starts a temporary Orthanc (with its DICOMweb plugin, as the end-to-end tests do), uploads
the demo study of scripts/demo_study.py (12 MR slices in two series and a CT slice, fictitious
patient), runs ``mri-tumor pacs run`` against it, opens the study in Orthanc Explorer in
headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright, as
scripts/screenshot.py does) once its series list shows the stored Structured Report and
Grad-CAM series, saves the whole page as a PNG (reduced to 256 colours) and stops Orthanc. Needs
the Debian packages orthanc and orthanc-dicomweb and the [test] extra (Playwright).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app_speed import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from demo_study import demo_files  # noqa: E402
from PIL import Image  # noqa: E402
from tests.orthanc import ORTHANC, PASSWORD, USER, OrthancServer  # noqa: E402

MRI_TUMOR = ROOT / ".venv" / "bin" / "mri-tumor"
SLICES = 12
VIEWPORT = {"width": 1100, "height": 700}
WAIT_MS = 30_000
SERIES_SHOWN = ("mri-tumor result", "mri-tumor Grad-CAM")  # what the series list must show


def capture(url: str, study_id: str, out: Path) -> None:
    """Save Orthanc Explorer's page of study ``study_id`` to ``out`` once it lists the SR
    and the Grad-CAM series."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT,
                                    http_credentials={"username": USER, "password": PASSWORD})
            page.goto(f"{url}/app/explorer.html#study?uuid={study_id}", timeout=WAIT_MS)
            for text in SERIES_SHOWN:
                expect(page.locator("#list-series").get_by_text(text)).to_be_visible(
                    timeout=WAIT_MS)
            page.wait_for_timeout(500)  # the list's last paint
            png = page.screenshot(full_page=True)  # the whole series list, ~1100 x 950
        finally:
            browser.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(256).save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pacs-orthanc.png",
                        help="where to save the PNG (default docs/pacs-orthanc.png)")
    args = parser.parse_args(argv)
    for needed in (CHROMIUM, ORTHANC, MRI_TUMOR):
        if not needed.exists():
            print(f"needs {needed}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as folder, OrthancServer.start(Path(folder)) as orthanc:
        study_ids = {orthanc.upload(data)["ParentStudy"] for data in demo_files(SLICES)}
        (study_id,) = study_ids
        run = subprocess.run([str(MRI_TUMOR), "pacs", "run", "--url", orthanc.dicomweb_url,
                              "--user", f"{USER}:{PASSWORD}"], cwd=ROOT)
        if run.returncode != 0:
            print(f"mri-tumor pacs run exited {run.returncode}", file=sys.stderr)
            return 1
        capture(orthanc.url, study_id, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
