#!/usr/bin/env bash
# Trains the shipped segmentation model (src/mri_tumor/weights/segment/): a U-Net on the
# EfficientNet-Lite0 encoder (ImageNet start), on the FLAIR slices and manual masks of
# lgg-tcga, 13 of its 65 patients held out (per institution, seeded), with the SegmentConfig
# defaults (256 px, 30 epochs, cosine, soft Dice + BCE); then scores the held-out patients
# into the card. 68 min on 2 CPU threads (beside other work). Usage: scripts/train_segment_model.sh [LGG_DIR] [OUT]
set -euo pipefail
LGG=${1:-../shared/data/lgg-tcga}
OUT=${2:-runs/segment}
BIN=${BIN:-.venv/bin}
"$BIN/mri-tumor" train-segmenter "$LGG" --out "$OUT" --max-minutes 100
# Ship it: cp "$OUT"/{model.safetensors,card.json,split.csv,history.json} src/mri_tumor/weights/segment/
