#!/usr/bin/env bash
# Evaluate a checkpoint (or an .onnx export) on the config's validation split, on one GPU:
#   bash scripts/run_eval_gpu.sh CONFIG [--device ID] [--checkpoint CKPT] [--extra OPTIONS...]
# --device: the GPU index (default 0; exported as CUDA_VISIBLE_DEVICES); --checkpoint: the model file
# (else the config's checkpoint/pretrained); everything after --extra goes to `conformer eval`
# (e.g. --extra --data_url /data/imagenet --val_dir val --use_ema --output metrics.json).
source "$(dirname "$0")/wrapper_lib.sh"
require_positional CONFIG "$@"
CONFIG=$1; shift
DEVICE=0; CHECKPOINT=""
parse_options device checkpoint -- "$@"
export CUDA_VISIBLE_DEVICES=$DEVICE
ARGS=(--config "$CONFIG" --device_target cuda --device_id 0)
[[ -n $CHECKPOINT ]] && ARGS+=(--checkpoint "$CHECKPOINT")
exec "$PY" -m conformer_vision eval "${ARGS[@]}" "${EXTRA[@]}"
