#!/usr/bin/env bash
# Quick start on real data, CPU only, nothing downloaded beyond the package registries:
#   bash scripts/quickstart.sh [extra `conformer train` options, e.g. --epochs 2]
# 1. installs the dependencies into the virtual environment .venv and Debian's dataset-fashion-mnist
#    (scripts/setup.sh; SKIP_SETUP=1 skips it),
# 2. writes Fashion-MNIST as class folders of 32x32 RGB PNGs into data/fashion_mnist,
# 3. trains configs/quickstart_fashion_mnist.yaml (run directory runs/quickstart_fashion_mnist;
#    running the script again resumes or reuses that run),
# 4. evaluates the best checkpoint and draws the training curves (curves.png) and confusion matrix.
# The CPU cores are split between compute threads and data-loading workers (cpu_split in
# wrapper_lib.sh: 1 + 1 on 2 cores, 6 + 2 on 8, 12 + 4 on 16); OMP_NUM_THREADS, or
# --num_parallel_workers N among the extra options, overrides its part.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${SKIP_SETUP:-0} == 1 ]] || bash scripts/setup.sh   # SKIP_SETUP=1: already installed
source scripts/wrapper_lib.sh   # PY: .venv's python; cpu_split
read -r THREADS WORKERS < <(cpu_split)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
CONFIG=configs/quickstart_fashion_mnist.yaml
RUN=runs/quickstart_fashion_mnist
echo "quickstart: $OMP_NUM_THREADS compute thread(s), $WORKERS data-loading worker(s), python $PY"

"$PY" -m conformer_vision prepare fashion-mnist data/fashion_mnist --image_size 32
"$PY" -m conformer_vision train --config "$CONFIG" --checkpoint auto --num_parallel_workers "$WORKERS" "$@"
# the best checkpoint: highest top-1 in the name (<arch>_<postfix>_best_e<epoch>_top1_<acc>.pt)
BEST=$(find "$RUN/best_checkpoints" -maxdepth 1 -name '*_top1_*.pt' 2>/dev/null \
       | awk -F_top1_ '{print $NF" "$0}' | sort -n | tail -n 1 | cut -d" " -f2-)
[[ -n $BEST ]] || { echo "quickstart: no best checkpoint in $RUN/best_checkpoints; did training stop early?" >&2; exit 1; }
"$PY" -m conformer_vision eval --config "$CONFIG" --checkpoint "$BEST" --num_parallel_workers "$WORKERS" \
  --output "$RUN/eval.json" --confusion_matrix "$RUN/confusion_matrix.png"
"$PY" -m conformer_vision plot "$RUN"
echo "done: $RUN (curves.png, confusion_matrix.png, eval.json, checkpoints, TensorBoard events in summary/)"
