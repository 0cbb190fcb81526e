#!/usr/bin/env bash
# Classify an image or a folder of images with a checkpoint, on one GPU:
#   bash scripts/run_infer_gpu.sh DATA --checkpoint CKPT [--arch NAME] [--output FILE.json] [--device ID] [--extra OPTIONS...]
# Prints "PATH (class: N)" per image and writes {path: class} to --output (default predictions.json).
# --arch is needed only for weights files that do not name it (authors', mmpretrain); --device: the GPU
# index (default 0); everything after --extra goes to `conformer predict` (e.g. --extra --topk 5, or
# --extra --device cpu without a GPU).
source "$(dirname "$0")/wrapper_lib.sh"
require_positional DATA "$@"
DATA=$1; shift
DEVICE=0; CHECKPOINT=""; ARCH=""; OUTPUT=predictions.json
parse_options checkpoint arch output device -- "$@"
[[ -n $CHECKPOINT ]] || { echo "--checkpoint is required" >&2; usage >&2; exit 2; }
export CUDA_VISIBLE_DEVICES=$DEVICE
ARGS=("$DATA" --checkpoint "$CHECKPOINT" --output "$OUTPUT" --device cuda)
[[ -n $ARCH ]] && ARGS+=(--arch "$ARCH")
exec "$PY" -m conformer_vision predict "${ARGS[@]}" "${EXTRA[@]}"
