#!/usr/bin/env bash
# Train on several GPUs of this machine with torchrun (the specification's entry point):
#   bash scripts/run_distribute_train_gpu.sh CONFIG [--num_devices N] [--device_ids 0,1,..] [--checkpoint CKPT] [--extra OPTIONS...]
# --num_devices: processes, one per GPU (default: the number of --device_ids, else all visible GPUs);
# --device_ids: GPUs to use (exported as CUDA_VISIBLE_DEVICES; default 0..N-1); --checkpoint: resume
# from CKPT (or 'auto'); everything after --extra goes to `conformer train` unchanged.
# batch_size is per GPU: the global batch is batch_size x N. Several machines: see docs/training.md.
set -euo pipefail
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { usage; exit 2; }
CONFIG=$1; shift
NUM=""; IDS=""; CHECKPOINT=""; EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --num_devices) NUM=$2; shift 2 ;;
    --device_ids) IDS=$2; shift 2 ;;
    --checkpoint) CHECKPOINT=$2; shift 2 ;;
    --extra) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z $NUM ]]; then
  if [[ -n $IDS ]]; then NUM=$(tr ',' '\n' <<<"$IDS" | grep -c .)
  else NUM=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
fi
[[ $NUM =~ ^[1-9][0-9]*$ ]] || { echo "no GPU found: pass --num_devices N (and --device_ids)" >&2; exit 2; }
[[ -n $IDS ]] || IDS=$(seq -s, 0 $((NUM - 1)))
[[ $(tr ',' '\n' <<<"$IDS" | grep -c .) -eq $NUM ]] || { echo "--device_ids $IDS does not list $NUM devices" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=$IDS
ARGS=(--config "$CONFIG" --device_target cuda --device_num "$NUM")
[[ -n $CHECKPOINT ]] && ARGS+=(--checkpoint "$CHECKPOINT")
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node "$NUM" \
  -m conformer_vision train "${ARGS[@]}" "${EXTRA[@]}"
