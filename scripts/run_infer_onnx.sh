#!/usr/bin/env bash
# Classify an image or a folder of images with an ONNX export (onnxruntime):
#   bash scripts/run_infer_onnx.sh DATA [--onnx_path MODEL.onnx] [--output FILE.json] [--extra OPTIONS...]
# Same output as run_infer_gpu.sh (class names and preprocessing come from the ONNX metadata);
# --onnx_path defaults to conformer_tiny_patch16.onnx, --output to predictions.json; everything after
# --extra goes to `conformer predict` (e.g. --extra --topk 5 --device cuda for the CUDA provider).
set -euo pipefail
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; }
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { usage; exit 2; }
DATA=$1; shift
ONNX=conformer_tiny_patch16.onnx; OUTPUT=predictions.json; EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --onnx_path) ONNX=$2; shift 2 ;;
    --output) OUTPUT=$2; shift 2 ;;
    --extra) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m conformer_vision predict "$DATA" --checkpoint "$ONNX" --output "$OUTPUT" "${EXTRA[@]}"
