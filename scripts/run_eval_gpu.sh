#!/usr/bin/env bash
# Evaluate a checkpoint (or an .onnx export) on the config's validation split, on one GPU:
#   bash scripts/run_eval_gpu.sh CONFIG [--device ID] [--checkpoint CKPT] [--extra OPTIONS...]
# --device: the GPU index (default 0; exported as CUDA_VISIBLE_DEVICES); --checkpoint: the model file
# (else the config's checkpoint/pretrained); everything after --extra goes to `conformer eval`
# (e.g. --extra --data_url /data/imagenet --val_dir val --use_ema --output metrics.json).
set -euo pipefail
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { usage; exit 2; }
CONFIG=$1; shift
DEVICE=0; CHECKPOINT=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --checkpoint) CHECKPOINT=$2; shift 2 ;;
    --extra) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=$DEVICE
ARGS=(--config "$CONFIG" --device_target cuda --device_id 0)
[[ -n $CHECKPOINT ]] && ARGS+=(--checkpoint "$CHECKPOINT")
exec "${PYTHON:-python3}" -m conformer_vision eval "${ARGS[@]}" "${EXTRA[@]}"
