"""How long one MR study takes end to end through ``mri-tumor pacs run``: retrieve (WADO-RS),
classify, build the SR and the Grad-CAM overlays, store (STOW-RS), against a real Orthanc
started for the run (Debian packages orthanc, orthanc-dicomweb).

    .venv/bin/python benchmarks/pacs_study.py --slices 100 --repeat 3 --size 512

Each repeat uploads a fresh study of ``--slices`` MR slices (the test fixture images, cycled,
resized to ``--size`` pixels square as 16-bit DICOM) and times, in one process with the model
loaded, ``process_study`` as a whole and its stages; then the whole command (``mri-tumor pacs
run --study UID``, start-up and model loading included) on another fresh study. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dicom_factory import make_mr_study  # noqa: E402
from tests.orthanc import PASSWORD, USER, OrthancServer  # noqa: E402

from mri_tumor.inference import Predictor  # noqa: E402
from mri_tumor.pacs.client import PacsServer  # noqa: E402
from mri_tumor.pacs.results import ModelIdentity, analyse, build_overlays, build_report  # noqa: E402
from mri_tumor.pacs.study import process_study  # noqa: E402

FIXTURES = sorted((ROOT / "tests" / "fixtures" / "images").glob("*/*.jpg"))


def resized_images(folder: Path, size: int) -> list[Path]:
    """The fixture images at ``size`` x ``size`` pixels (PNG, lossless), in ``folder``."""
    from PIL import Image

    paths = []
    for index, path in enumerate(FIXTURES):
        with Image.open(path) as image:
            target = folder / f"{index:02d}.png"
            image.convert("L").resize((size, size), Image.Resampling.BICUBIC).save(target)
        paths.append(target)
    return paths


def upload_study(orthanc: OrthancServer, images: list[Path], slices: int) -> str:
    """A fresh MR study of ``slices`` slices on the server; its Study Instance UID."""
    import io

    import pydicom

    files = make_mr_study([images[i % len(images)] for i in range(slices)])
    for data in files:
        orthanc.upload(data)
    return str(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID)


def stages(server: PacsServer, predictor: Predictor, study_uid: str) -> dict[str, float]:
    """Seconds per stage of one study (the stages ``process_study`` runs)."""
    model = ModelIdentity.of(predictor)
    times, start = {}, time.perf_counter()
    series = server.series(study_uid)
    datasets = [d for info in series for d in server.retrieve(study_uid, info)]
    times["retrieve"], start = time.perf_counter() - start, time.perf_counter()
    analysed = analyse(predictor, datasets)
    times["classify"], start = time.perf_counter() - start, time.perf_counter()
    report = build_report(analysed, predictor, model, study_uid)
    times["report"], start = time.perf_counter() - start, time.perf_counter()
    overlays = build_overlays(analysed, predictor, model, study_uid)
    times["overlays (Grad-CAM)"], start = time.perf_counter() - start, time.perf_counter()
    server.store(study_uid, [report, *overlays])
    times["store"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="slice width and height, pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, OrthancServer.start(Path(folder)) as orthanc:
        (Path(folder) / "images").mkdir()
        images = resized_images(Path(folder) / "images", args.size)
        server = PacsServer.connect(orthanc.dicomweb_url, USER, PASSWORD)
        predictor = Predictor.load()
        # Warm-up: the first Grad-CAM loads the torch model.
        process_study(server, predictor, upload_study(orthanc, images, 2))
        totals, per_stage = [], []
        for _ in range(args.repeat):
            study = upload_study(orthanc, images, args.slices)
            start = time.perf_counter()
            outcome = process_study(server, predictor, study)
            totals.append(time.perf_counter() - start)
            assert outcome.stored == args.slices + 1, outcome.stored
            per_stage.append(stages(server, predictor, upload_study(orthanc, images, args.slices)))
        study = upload_study(orthanc, images, args.slices)
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "mri-tumor"), "pacs", "run", "--url",
                        orthanc.dicomweb_url, "--user", f"{USER}:{PASSWORD}", "--study", study],
                       check=True, capture_output=True)
        command = time.perf_counter() - start
    print(json.dumps({
        "slices": args.slices, "size": args.size, "repeats": args.repeat,
        "process_study_seconds": [round(t, 2) for t in totals],
        "process_study_median_seconds": round(statistics.median(totals), 2),
        "stage_median_seconds": {name: round(statistics.median(s[name] for s in per_stage), 2)
                                 for name in per_stage[0]},
        "command_seconds_including_startup": round(command, 2)}, indent=1))


if __name__ == "__main__":
    main()
