#!/usr/bin/env bash
# Classify an image or a folder of images with a checkpoint, on one GPU:
#   bash scripts/run_infer_gpu.sh DATA [--checkpoint CKPT] [--arch NAME] [--output FILE.json] [--device ID] [--extra OPTIONS...]
# Prints "PATH (class: N)" per image and writes {path: class} to --output (default predictions.json).
# --arch is needed only for weights files that do not name it (authors', mmpretrain); --device: the GPU
# index (default 0); everything after --extra goes to `conformer predict` (e.g. --extra --topk 5, or
# --extra --device cpu without a GPU).
set -euo pipefail
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { usage; exit 2; }
DATA=$1; shift
DEVICE=0; CHECKPOINT=""; ARCH=""; OUTPUT=predictions.json; EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --checkpoint) CHECKPOINT=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --output) OUTPUT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --extra) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n $CHECKPOINT ]] || { echo "--checkpoint is required" >&2; usage >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=$DEVICE
ARGS=("$DATA" --checkpoint "$CHECKPOINT" --output "$OUTPUT" --device cuda)
[[ -n $ARCH ]] && ARGS+=(--arch "$ARCH")
exec "${PYTHON:-python3}" -m conformer_vision predict "${ARGS[@]}" "${EXTRA[@]}"
