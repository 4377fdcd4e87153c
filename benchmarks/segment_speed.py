"""Time to outline one whole scan: a 155-slice 240 x 240 NIfTI volume (BraTS size), from the
file to the mask on the input's grid and its measurement, with the shipped segmenter.

    python benchmarks/segment_speed.py [--repeats 5] [--threads 2] [--volume FILE.nii.gz]
        [--with-classifier] [--segmenter DIR]

Without --volume it writes the synthetic head of ``scan_speed.py`` once. The time covers
reading and windowing the volume, the axial stack, every network call of the U-Net (torch,
channels-last, batch norm folded), post-processing on the 3-D mask, the measurement and the
mask written as ``.mask.nii.gz`` (``Outliner.run``, what ``mri-tumor segment`` does).
``--with-classifier`` adds the classifier's scan answer first (ONNX), as ``segment`` does by
default. The models are loaded before timing. Target: at most 5 s on the 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from scan_speed import synthetic_volume

from mri_tumor import Predictor
from mri_tumor.inference.outlining import Outliner
from mri_tumor.inference.segmentation import Segmenter

TARGET_SECONDS = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with-classifier", action="store_true")
    parser.add_argument("--segmenter", type=Path, help="a segmentation model folder "
                                                        "(default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = Segmenter.load(args.segmenter)
    predictor = (Predictor.load(backend="onnx", threads=args.threads)
                 if args.with_classifier else None)
    with tempfile.TemporaryDirectory() as folder:
        volume = args.volume or synthetic_volume(Path(folder) / "head.nii.gz")
        outliner = Outliner(segmenter, predictor, Path(folder) / "masks")
        outliner.run([volume], [volume])  # warm-up
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            (result,) = outliner.run([volume], [volume])
            seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    what = "classifier + segmenter" if predictor else "segmenter"
    print(f"{volume.name if args.volume else '240 x 240 x 155 synthetic volume'} ({what}, "
          f"{args.threads} threads): median {median:.2f} s, fastest {min(seconds):.2f} s over "
          f"{args.repeats} runs; target {TARGET_SECONDS:g} s: "
          f"{'met' if median <= TARGET_SECONDS else 'missed'} ({result.status})")


if __name__ == "__main__":
    main()
