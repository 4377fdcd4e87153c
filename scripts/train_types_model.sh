#!/usr/bin/env bash
# Trains the shipped `types` model (src/mri_tumor/weights/types/): EfficientNet-Lite0 from
# its ImageNet start, two heads (the tumour type: 14 types + normal; the MR sequence: T1,
# T1C+, T2), on the `<Type> <Sequence>` teaching-file folder, then fits the guard's refusal
# of head CT. Usage: scripts/train_types_model.sh [TYPES_DIR] [CT_DIR] [OUT]
set -euo pipefail
TYPES=${1:-../shared/data/brain-mri-44-types}
CT=${2:-../shared/data/head-ct}
OUT=${3:-runs/types}
BIN=${BIN:-.venv/bin}
# ImageNet start rather than the 4-class model's backbone: that model was trained on part
# of this folder, so its backbone has seen images that land in this model's validation split.
"$BIN/mri-tumor" train "$TYPES" --labels types --arch efficientnet_lite0 --out "$OUT" \
  --image-size 208 --epochs 24 --batch-size 16 --lr 3e-4 --schedule cosine \
  --augment-probability 0.5 --max-minutes 55 --refuse "$CT" --force

# The guard's density on block statistics, fitted on brain MRIs of all five sources: this
# model's own rows joined with the other sources of the whole-scan split (made as in
# scripts/train_shipped_model.sh); the rest of the guard stays (docs/ood-guard.md).
SHARED=$(dirname "$TYPES")
KAGGLE=$SHARED/brain-tumor-mri/Training
"$BIN/python" scripts/join_density_split.py "$OUT/split.csv" --source "$(basename "$TYPES")" \
  --add runs/sources/split_oof.csv --out runs/types-density.csv
"$BIN/mri-tumor" calibrate "$KAGGLE" "$TYPES" "$SHARED/lgg-tcga" runs/sources/skull-stripped-normal \
  runs/sources/healthy-volumes --model "$OUT" --density-only --density-split runs/types-density.csv
