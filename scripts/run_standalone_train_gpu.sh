#!/usr/bin/env bash
# Train on one GPU (the specification's entry point):
#   bash scripts/run_standalone_train_gpu.sh CONFIG [--device ID] [--checkpoint CKPT] [--extra OPTIONS...]
# --device: the GPU index (default 0; exported as CUDA_VISIBLE_DEVICES); --checkpoint: resume from CKPT
# (or 'auto'); everything after --extra goes to `conformer train` unchanged (e.g. --extra --batch_size 48).
source "$(dirname "$0")/wrapper_lib.sh"
require_positional CONFIG "$@"
CONFIG=$1; shift
DEVICE=0; CHECKPOINT=""
parse_options device checkpoint -- "$@"
export CUDA_VISIBLE_DEVICES=$DEVICE
ARGS=(--config "$CONFIG" --device_target cuda --device_id 0 --device_num 1)
[[ -n $CHECKPOINT ]] && ARGS+=(--checkpoint "$CHECKPOINT")
exec "$PY" -m conformer_vision train "${ARGS[@]}" "${EXTRA[@]}"
