"""Write a demo brain MR study as DICOM files, to try ``mri-tumor pacs run`` on a PACS.

    .venv/bin/python scripts/demo_study.py demo-study [--slices 20]

Two MR series made from the test fixture images (cycled to ``--slices`` slices in all) plus
one synthetic CT slice, all in one study, written as ``OUT_DIR/0001.dcm``... Upload them to
a DICOM server (e.g. Orthanc's "Upload" page), then run ``mri-tumor pacs run``. The patient
name, ID, birth date and accession number in them are fictitious. Run it from the
repository root: it uses tests/dicom_factory.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dicom_factory import make_mr_study  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "images"
# One image of each class in turn (glioma, meningioma, notumor, pituitary, glioma...).
IMAGES = [image for group in zip(*(sorted(folder.glob("*.jpg"))
                                   for folder in sorted(FIXTURES.iterdir())), strict=False)
          for image in group]


def demo_files(slices: int) -> list[bytes]:
    """The demo study's DICOM files: ``slices`` MR slices in two series, then a CT slice."""
    images = [IMAGES[i % len(IMAGES)] for i in range(slices)]
    return make_mr_study(images, series_count=2, ct_slice=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="folder for the .dcm files (created if missing)")
    parser.add_argument("--slices", type=int, default=20,
                        help="MR slices in all, over two series (default 20)")
    args = parser.parse_args(argv)
    if args.slices < 2:
        parser.error("--slices must be at least 2 (two MR series)")
    if args.out_dir.is_dir() and any(args.out_dir.glob("*.dcm")):
        print(f"{args.out_dir} already holds .dcm files; not overwriting them "
              "(choose an empty folder)", file=sys.stderr)
        return 2
    files = demo_files(args.slices)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for number, data in enumerate(files, 1):
        (args.out_dir / f"{number:04d}.dcm").write_bytes(data)
    print(f"wrote {len(files)} DICOM files ({args.slices} MR slices in 2 series, 1 CT slice) "
          f"to {args.out_dir}; the patient data in them is fictitious")
    return 0


if __name__ == "__main__":
    sys.exit(main())
