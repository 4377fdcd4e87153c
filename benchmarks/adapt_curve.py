"""Continuous training, measured: adapt a model that never saw the teaching-file source with
25, 50, 100, 200 and all of its training images, and once with shuffled labels.

    mkdir -p runs/kaggle-only && for f in card.json model.safetensors split.csv; do
      git show c789561:src/mri_tumor/weights/efficientnet_lite0/$f > runs/kaggle-only/$f; done
    python benchmarks/adapt_curve.py --base runs/kaggle-only \
        --site ../shared/data/brain-mri-44-types \
        --reference ../shared/data/brain-tumor-mri/Training --out runs/adapt-curve \
        --plot docs/adapt-curve.png

The site folder's in-scope images (glioma, meningioma, no tumour) are split duplicate-aware
once: 30% are a fixed **site test set** never used for adapting, and site samples of each size
are drawn (stratified, seed 0) from the rest. Each sample goes through `mri-tumor adapt`
(its own check part decides the gate); every candidate the gate promotes is then scored on the
site test set. The reference accuracy is the gate's (the base model's own Kaggle validation
images). Writes `results.json`, and `docs/adapt-curve.png` with --plot.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

from mri_tumor.adaptation import AdaptConfig, adapt, gate_scores
from mri_tumor.data.folders import scan_folder
from mri_tumor.data.splitting import split_folders
from mri_tumor.inference import Predictor

SIZES = (25, 50, 100, 200, None)  # None: all of the site's training pool


def link_sample(images: list, root: Path, target: Path, shuffle: bool, seed: int) -> None:
    """A site folder of symbolic links, a sub-folder per class (labels permuted if asked)."""
    labels = [image.label for image in images]
    if shuffle:
        random.Random(seed).shuffle(labels)
    for number, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = target / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number:04d}{image.path.suffix}").symlink_to(image.path.resolve())


def stratified(images: list, size: int | None, seed: int) -> list:
    """``size`` images with the classes' shares of ``images`` (all of them for None)."""
    if size is None or size >= len(images):
        return list(images)
    by_class = defaultdict(list)
    for image in images:
        by_class[image.label].append(image)
    rng = random.Random(seed)
    sample = []
    for members in by_class.values():
        rng.shuffle(members)
        sample += members[:max(4, round(size * len(members) / len(images)))]
    return sample[:size] if len(sample) > size else sample


def site_test_accuracy(model: Path, test: list) -> float:
    return gate_scores(Predictor.load(model), test)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    args = parser.parse_args()
    scan = scan_folder(args.site)
    rows = split_folders([scan], val_fraction=0.3, seed=0)
    by_path = {scan.relative(image.path): image for image in scan.images}
    pool = [by_path[row.path] for row in rows if row.split == "train"]
    test = [by_path[row.path] for row in rows if row.split == "val"]
    results = {"site_test_n": len(test), "pool_n": len(pool),
               "base_site_test_accuracy": site_test_accuracy(args.base, test),
               "runs": []}
    print(f"site test: {len(test)} images, base accuracy "
          f"{results['base_site_test_accuracy']:.1%}", flush=True)
    for size, shuffle in [(size, False) for size in SIZES] + [(200, True)]:
        sample = stratified(pool, size, seed=0)
        name = f"{'shuffled-' if shuffle else ''}{len(sample)}"
        site = args.out / "sites" / name
        link_sample(sample, args.site, site, shuffle, seed=0)
        started = time.perf_counter()
        result = adapt(AdaptConfig(site_dir=site, out=args.out / name, from_model=args.base,
                                   reference_dirs=[args.reference], epochs=args.epochs),
                       progress=False)
        run = {"name": name, "site_images": len(sample), "shuffled": shuffle,
               "seconds": round(time.perf_counter() - started, 1), **result.to_dict()}
        if result.promoted:
            run["site_test_accuracy"] = site_test_accuracy(args.out / name, test)
        results["runs"].append(run)
        print(f"{name}: {result.reason} ({run['seconds']:.0f} s)"
              + (f", site test {run['site_test_accuracy']:.1%}" if result.promoted else ""),
              flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)


def plot(results: dict, path: Path) -> None:
    """Site accuracy (the gate's check part, every candidate; the fixed site test set, the
    promoted ones) and reference accuracy against the number of site images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if not r["shuffled"]]
    sizes = [r["site_images"] for r in runs]
    reference = next(name for name in runs[0]["base"] if name != "site")
    figure, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot(sizes, [r["candidate"]["site"]["accuracy"] for r in runs], "o-", color="C0",
            label="site check part (gate): candidate")
    ax.plot(sizes, [r["base"]["site"]["accuracy"] for r in runs], "o:", color="C0",
            alpha=0.6, label="site check part (gate): base model")
    promoted = [r for r in runs if r["promoted"]]
    ax.plot([r["site_images"] for r in promoted], [r["site_test_accuracy"] for r in promoted],
            "D", color="C2", label=f"fixed site test set ({results['site_test_n']}): promoted")
    ax.axhline(results["base_site_test_accuracy"], color="C2", linestyle=":",
               label="fixed site test set: base model")
    ax.plot(sizes, [r["candidate"][reference]["accuracy"] for r in runs], "s-", color="C1",
            label=f"reference ({reference}): candidate")
    ax.axhline(runs[0]["base"][reference]["accuracy"], color="C1", linestyle=":",
               label="reference: base model")
    for r in runs:
        ax.annotate("promoted" if r["promoted"] else "refused",
                    (r["site_images"], r["candidate"][reference]["accuracy"]),
                    textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set(xscale="log", xlabel="site images used for adapting", ylabel="accuracy",
           ylim=(0, 1.05), title="Adapting a Kaggle-only model to a second source")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
