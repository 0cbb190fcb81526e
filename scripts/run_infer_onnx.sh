#!/usr/bin/env bash
# Classify an image or a folder of images with an ONNX export (onnxruntime):
#   bash scripts/run_infer_onnx.sh DATA [--onnx_path MODEL.onnx] [--output FILE.json] [--extra OPTIONS...]
# Same output as run_infer_gpu.sh (class names and preprocessing come from the ONNX metadata);
# --onnx_path defaults to conformer_tiny_patch16.onnx, --output to predictions.json; everything after
# --extra goes to `conformer predict` (e.g. --extra --topk 5 --device cuda for the CUDA provider).
source "$(dirname "$0")/wrapper_lib.sh"
require_positional DATA "$@"
DATA=$1; shift
ONNX_PATH=conformer_tiny_patch16.onnx; OUTPUT=predictions.json
parse_options onnx_path output -- "$@"
exec "$PY" -m conformer_vision predict "$DATA" --checkpoint "$ONNX_PATH" --output "$OUTPUT" "${EXTRA[@]}"
