#!/usr/bin/env bash
# The whole-scan candidate of issue #32 (docs/experiments.md, "Whole scans"): the previous
# shipped model (two sources, commit b2ad696) fine-tuned on five sources with a distillation
# term that keeps its answers on its own two sources, then its scan rule fitted out of fold: the
# fourth candidate, on a fresh split whose rule fold the network does not train on (the third
# is this script at commit f48d9c2, the second at df468c3). The fifth run (runs/scans5) adds one
# change to the fourth's recipe: the lgg-tcga T1 slices twice per epoch (--oversample lgg-tcga:T1=2).
# The shipped weights themselves: scripts/train_shipped_model.sh.
#   scripts/train_scans_candidate.sh [DATA_DIR]      (DATA_DIR: ../shared/data by default)
# Writes runs/scans5.
set -euo pipefail
DATA=${1:-../shared/data}
BIN=${BIN:-.venv/bin}

# The whole-scan sources as the product reads them, and the split: the previous model's split
# of Kaggle and teaching files unchanged, lgg-tcga and the healthy volumes split by patient.
"$BIN/python" scripts/prepare_scan_sources.py --data "$DATA" --out runs/sources
mkdir -p runs/scan-eval/healthy-volumes/notumor
ln -sf "$(realpath "$DATA"/healthy-volumes)"/*.nii.gz runs/scan-eval/healthy-volumes/notumor/
# lgg-tcga re-drawn: 11 test patients and an 11-patient rule fold (side "val") from the old
# training side; the healthy volumes swap sides.
"$BIN/python" scripts/resplit_scan_sources.py --split runs/sources/split.csv \
  --out runs/sources/split_oof.csv

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
  --from-model runs/previous --split runs/sources/split_oof.csv --out runs/scans5 \
  --image-size 208 --epochs 3 --batch-size 16 --lr 1e-4 --schedule cosine \
  --augment-probability 0.5 --source-balance 0.4 --distill 1 --refuse "$DATA/head-ct" \
  --oversample lgg-tcga:T1=2 \
  --max-minutes 70

# The scan rule, fitted on the rule fold's patients (not trained on) and the training-side
# healthy volumes.
"$BIN/python" scripts/fit_scan_rule.py runs/scans5 --scans "$DATA/lgg-tcga" \
  runs/scan-eval/healthy-volumes --split runs/sources/split_oof.csv --side val \
  --healthy-side train
