"""End-to-end time of one whole scan: a 155-slice 240 x 240 NIfTI volume (BraTS size), from
the file to the scan answer, on the ONNX backend.

    python benchmarks/scan_speed.py [--model default] [--repeats 5] [--threads 2]
        [--volume FILE.nii.gz]

Without --volume it writes a synthetic head (an ellipsoid with texture, 1 mm voxels) once;
the time covers reading and windowing the volume, the axial slices, every network call, the
guard and the scan rule (``Predictor.predict`` then ``scans.scan_summaries``). The model is
loaded (and its ONNX file built) before timing. Prints the median and the fastest run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mri_tumor import Predictor
from mri_tumor.inference.scans import scan_summaries


def synthetic_volume(path: Path, shape: tuple[int, int, int] = (240, 240, 155)) -> Path:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x / 0.75) ** 2 + (y / 0.9) ** 2 + (z / 1.05) ** 2 < 1
    volume = np.where(head, 500 + 200 * np.sin(9 * x) * np.cos(7 * y) * np.sin(5 * z), 0)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.eye(4)), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--volume", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, backend="onnx", threads=args.threads)
    with tempfile.TemporaryDirectory() as folder:
        volume = args.volume or synthetic_volume(Path(folder) / "head.nii.gz")
        predictor.predict([volume])  # warm-up
        seconds, slices = [], 0
        for _ in range(args.repeats):
            started = time.perf_counter()
            results = predictor.predict([volume])
            summary, = scan_summaries(results, predictor.card)
            seconds.append(time.perf_counter() - started)
            slices = summary["slices"] + summary["refused"]
    print(f"{volume.name if args.volume else '240 x 240 x 155 synthetic volume'}: "
          f"{slices} slices read, median {statistics.median(seconds):.2f} s, fastest "
          f"{min(seconds):.2f} s over {args.repeats} runs ({args.threads} threads, ONNX)")


if __name__ == "__main__":
    main()
