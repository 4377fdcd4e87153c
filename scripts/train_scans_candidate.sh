#!/usr/bin/env bash
# The whole-scan candidate of issue #32 (docs/experiments.md, "Whole scans"): the previous
# shipped model (two sources, commit b2ad696) fine-tuned on five sources with a distillation
# term that keeps its answers on its own two sources (the third candidate; the second is this
# script at commit df468c3), then its scan rule fitted.
# The shipped weights themselves: scripts/train_shipped_model.sh.
#   scripts/train_scans_candidate.sh [DATA_DIR]      (DATA_DIR: ../shared/data by default)
# Writes runs/scans3.
set -euo pipefail
DATA=${1:-../shared/data}
BIN=${BIN:-.venv/bin}

# The whole-scan sources as the product reads them, and the split: the previous model's split
# of Kaggle and teaching files unchanged, lgg-tcga and the healthy volumes split by patient.
"$BIN/python" scripts/prepare_scan_sources.py --data "$DATA" --out runs/sources
mkdir -p runs/scan-eval/healthy-volumes/notumor
ln -sf "$(realpath "$DATA"/healthy-volumes)"/*.nii.gz runs/scan-eval/healthy-volumes/notumor/

# The starting point: the previous shipped model, from git history.
mkdir -p runs/previous
for f in card.json model.safetensors split.csv; do
  git show "b2ad696:src/mri_tumor/weights/efficientnet_lite0/$f" > "runs/previous/$f"
done

# 3 epochs, cosine from 1e-4, batch 16, half of each batch augmented (the defaults: geometry,
# gamma, bias field, noise), smaller sources repeated up to 0.4 of the largest; on the Kaggle
# and teaching-file images the predictions are also pulled towards the previous model's
# (--distill 1, temperature 2); the guard re-fitted with head CT. On 2 CPU threads (no GPU).
"$BIN/mri-tumor" train "$DATA/brain-tumor-mri/Training" "$DATA/brain-mri-44-types" \
  "$DATA/lgg-tcga" runs/sources/skull-stripped-normal runs/sources/healthy-volumes \
  --from-model runs/previous --split runs/sources/split.csv --out runs/scans3 \
  --image-size 208 --epochs 3 --batch-size 16 --lr 1e-4 --schedule cosine \
  --augment-probability 0.5 --source-balance 0.4 --distill 1 --refuse "$DATA/head-ct" \
  --max-minutes 70

# The scan rule, fitted on the training-side patients and healthy volumes.
"$BIN/python" scripts/fit_scan_rule.py runs/scans3 --scans "$DATA/lgg-tcga" \
  runs/scan-eval/healthy-volumes --split runs/sources/split.csv
