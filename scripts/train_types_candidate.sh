#!/usr/bin/env bash
# A `types` candidate that knows FLAIR and the lower-grade glioma patients (issue #32): the
# shipped types model fine-tuned on the teaching files plus every slice of `lgg-tcga` (its
# sequence head grows a FLAIR output), with a distillation term that keeps its answers on the
# teaching files. docs/experiments.md states the rule it is judged by.
#   scripts/train_types_candidate.sh [DATA_DIR]      (DATA_DIR: ../shared/data by default)
# Writes runs/types2.
set -euo pipefail
DATA=${1:-../shared/data}
BIN=${BIN:-.venv/bin}

# The whole-scan split (patients of lgg-tcga), then the types split extended with it.
[ -f runs/sources/split.csv ] || "$BIN/python" scripts/prepare_scan_sources.py --data "$DATA"
"$BIN/python" scripts/prepare_types_sources.py --lgg "$DATA/lgg-tcga"

# 3 epochs, cosine from 1e-4, batch 16, half of each batch augmented, no source repeats (the
# teaching files are already 0.4 of lgg-tcga); the guard re-fitted with head CT. 2 CPU threads.
"$BIN/mri-tumor" train "$DATA/brain-mri-44-types" "$DATA/lgg-tcga" --labels types \
  --from-model src/mri_tumor/weights/types --split runs/types-sources/split.csv \
  --out runs/types2 --epochs 3 --batch-size 16 --lr 1e-4 --schedule cosine \
  --augment-probability 0.5 --source-balance 0 --distill 1 --refuse "$DATA/head-ct" \
  --max-minutes 60 --force
