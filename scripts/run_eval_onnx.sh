#!/usr/bin/env bash
# Evaluate an ONNX export with onnxruntime on an image folder (DATA/<class>/<image>):
#   bash scripts/run_eval_onnx.sh DATA [--onnx_path MODEL.onnx] [--extra OPTIONS...]
# --onnx_path defaults to conformer_tiny_patch16.onnx (the export's default name); everything after
# --extra goes to `conformer eval-onnx` (e.g. --extra -m GPU --image_size 224 --prefetch 16).
source "$(dirname "$0")/wrapper_lib.sh"
require_positional DATA "$@"
DATA=$1; shift
ONNX_PATH=conformer_tiny_patch16.onnx
parse_options onnx_path -- "$@"
exec "$PY" -m conformer_vision eval-onnx "$DATA" --onnx_path "$ONNX_PATH" "${EXTRA[@]}"
