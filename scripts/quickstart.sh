#!/usr/bin/env bash
# Quick start on real data, CPU only, nothing downloaded beyond the package registries:
#   bash scripts/quickstart.sh [extra `conformer train` options, e.g. --epochs 2]
# 1. installs the dependencies and Debian's dataset-fashion-mnist (scripts/setup.sh),
# 2. writes Fashion-MNIST as class folders of 32x32 RGB PNGs into data/fashion_mnist,
# 3. trains configs/quickstart_fashion_mnist.yaml (run directory runs/quickstart_fashion_mnist;
#    running the script again resumes or reuses that run),
# 4. evaluates the best checkpoint and draws the training curves (curves.png) and confusion matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${SKIP_SETUP:-0} == 1 ]] || bash scripts/setup.sh   # SKIP_SETUP=1: already installed
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# One compute thread: on a small CPU shared with the data-loading worker (or other jobs), more
# threads spin against each other and are slower; set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CONFIG=configs/quickstart_fashion_mnist.yaml
RUN=runs/quickstart_fashion_mnist

"$PY" -m conformer_vision prepare fashion-mnist data/fashion_mnist --image_size 32
"$PY" -m conformer_vision train --config "$CONFIG" --checkpoint auto "$@"
# the best checkpoint: highest top-1 in the name (<arch>_<postfix>_best_e<epoch>_top1_<acc>.pt)
BEST=$(ls -1 "$RUN"/best_checkpoints/*_top1_*.pt | awk -F_top1_ '{print $NF" "$0}' | sort -n | tail -n 1 | cut -d" " -f2-)
"$PY" -m conformer_vision eval --config "$CONFIG" --checkpoint "$BEST" \
  --output "$RUN/eval.json" --confusion_matrix "$RUN/confusion_matrix.png"
"$PY" -m conformer_vision plot "$RUN"
echo "done: $RUN (curves.png, confusion_matrix.png, eval.json, checkpoints, TensorBoard events in summary/)"
