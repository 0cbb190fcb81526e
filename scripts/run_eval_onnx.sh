#!/usr/bin/env bash
# Evaluate an ONNX export with onnxruntime on an image folder (DATA/<class>/<image>):
#   bash scripts/run_eval_onnx.sh DATA [--onnx_path MODEL.onnx] [--extra OPTIONS...]
# --onnx_path defaults to conformer_tiny_patch16.onnx (the export's default name); everything after
# --extra goes to `conformer eval-onnx` (e.g. --extra -m GPU --image_size 224 --prefetch 16).
set -euo pipefail
usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { usage; exit 2; }
DATA=$1; shift
ONNX=conformer_tiny_patch16.onnx; EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --onnx_path) ONNX=$2; shift 2 ;;
    --extra) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m conformer_vision eval-onnx "$DATA" --onnx_path "$ONNX" "${EXTRA[@]}"
