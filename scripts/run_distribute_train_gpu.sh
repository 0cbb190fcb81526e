#!/usr/bin/env bash
# Train on several GPUs of this machine with torchrun (the specification's entry point):
#   bash scripts/run_distribute_train_gpu.sh CONFIG [--num_devices N] [--device_ids 0,1,..] [--checkpoint CKPT] [--extra OPTIONS...]
# --num_devices: processes, one per GPU (default: the number of --device_ids, else all visible GPUs);
# --device_ids: GPUs to use (exported as CUDA_VISIBLE_DEVICES; default 0..N-1); --checkpoint: resume
# from CKPT (or 'auto'); everything after --extra goes to `conformer train` unchanged.
# batch_size is per GPU: the global batch is batch_size x N. Several machines: see docs/training.md.
source "$(dirname "$0")/wrapper_lib.sh"
require_positional CONFIG "$@"
CONFIG=$1; shift
NUM_DEVICES=""; DEVICE_IDS=""; CHECKPOINT=""
parse_options num_devices device_ids checkpoint -- "$@"
count() { tr ',' '\n' <<<"$1" | grep -c .; }
if [[ -z $NUM_DEVICES ]]; then
  if [[ -n $DEVICE_IDS ]]; then NUM_DEVICES=$(count "$DEVICE_IDS")
  else NUM_DEVICES=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
fi
[[ $NUM_DEVICES =~ ^[1-9][0-9]*$ ]] || { echo "no GPU found: pass --num_devices N (and --device_ids)" >&2; exit 2; }
[[ -n $DEVICE_IDS ]] || DEVICE_IDS=$(seq -s, 0 $((NUM_DEVICES - 1)))
[[ $(count "$DEVICE_IDS") -eq $NUM_DEVICES ]] || { echo "--device_ids $DEVICE_IDS does not list $NUM_DEVICES devices" >&2; exit 2; }
export CUDA_VISIBLE_DEVICES=$DEVICE_IDS
ARGS=(--config "$CONFIG" --device_target cuda --device_num "$NUM_DEVICES")
[[ -n $CHECKPOINT ]] && ARGS+=(--checkpoint "$CHECKPOINT")
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NUM_DEVICES" \
  -m conformer_vision train "${ARGS[@]}" "${EXTRA[@]}"
