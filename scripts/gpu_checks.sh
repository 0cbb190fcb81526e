#!/usr/bin/env bash
# GPU speed checks (issue 5), for a machine with one CUDA GPU. Run from anywhere, as is:
#
#     bash scripts/gpu_checks.sh            # results under $OUT if set, else runs/gpu_checks
#
# About 8 minutes on an H200 (most of it torch.compile); every step has its own time limit and a
# failing step does not stop the others. What it measures, each printed and saved as JSON:
#   1. the GPU's bf16 / fp32 GEMM peak (torch.mm 8192^3), next to the nominal H200 dense bf16 peak;
#   2. inference of tiny and base: reference mode, eager fp32, bf16 autocast, bf16 + channels_last,
#      torch.compile bf16 + channels_last (tiny) -- side by side, one process per variant list;
#   3. one training step (forward both heads, mean CE, backward, AdamW) of tiny and base, likewise;
#   4. a single-GPU NCCL torchrun training smoke run (Fashion-MNIST 32px, 1 epoch, bf16).
# Then summary.md: img/s, the achieved model TFLOP/s (torch.utils.flop_counter FLOPs x img/s) and
# its fraction of the measured bf16 GEMM peak and of the nominal H200 bf16 peak (NOMINAL_BF16_TFLOPS).
# Files written (8 at most, so a device tool can fetch them all): gpu_checks.log, peak.json,
# infer_tiny.json, infer_base.json, train_tiny.json, train_base.json, torchrun.log, summary.md.
#
# DRY_RUN=1 checks the plumbing on a CPU in a minute or two: the mini test variant, 32 px inputs,
# no torch.compile, torchrun on gloo. Nothing else needs setting.

set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-runs/gpu_checks}"
NOMINAL_BF16_TFLOPS="${NOMINAL_BF16_TFLOPS:-790}"  # H200 dense bf16 (device tool docs); set for other GPUs
if [ "${DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu; TINY=conformer_mini_test; BASE=conformer_mini_test; SIZE=32; B1=4; B2=4; COMPILE=""; RUNS=1
    PEAK_N=512; TRAIN_DEVICE=cpu; TRAIN_ARCH=conformer_mini_test; LIMIT=20
else
    DEVICE=cuda; TINY=conformer_tiny_patch16; BASE=conformer_base_patch16; SIZE=224; B1=128; B2=64
    COMPILE=",compile_bf16_cl"; RUNS=10; PEAK_N=8192; TRAIN_DEVICE=cuda; TRAIN_ARCH=conformer_tiny_patch16; LIMIT=200
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
: > "$LOG"
say() { echo "== $*" | tee -a "$LOG"; }
run() {  # run LIMIT_S CMD...: output to the log and the terminal; never stops the script
    local limit=$1; shift
    say "$*"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || say "exit code $rc (124 = timed out after ${limit}s)"
}

say "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"

say "GEMM peaks"
run 120 python - "$OUT/peak.json" "$DEVICE" "$PEAK_N" <<'EOF'
import json, sys
from conformer_vision.probes import gemm_peak
peaks = {kind: gemm_peak(kind, sys.argv[2], n=int(sys.argv[3]), reps=10)[0] for kind in ("bf16", "fp16", "fp32")}
print({k: f"{v / 1000:.0f} TFLOP/s" for k, v in peaks.items()})
json.dump(peaks, open(sys.argv[1], "w"))
EOF

BENCH=(python -m conformer_vision benchmark --device "$DEVICE" --image_size "$SIZE" --warmup 3 --runs "$RUNS")
run 300 "${BENCH[@]}" --arch "$TINY" --batch_size "$B1" --compare "reference,eager,bf16,bf16_cl$COMPILE" --json "$OUT/infer_tiny.json"
run 150 "${BENCH[@]}" --arch "$BASE" --batch_size "$B2" --compare reference,eager,bf16,bf16_cl --json "$OUT/infer_base.json"
run 240 "${BENCH[@]}" --arch "$TINY" --batch_size "$B2" --mode train --compare "reference,eager,bf16,bf16_cl$COMPILE" --json "$OUT/train_tiny.json"
run 150 "${BENCH[@]}" --arch "$BASE" --batch_size "$((B2 / 2))" --mode train --compare reference,eager,bf16,bf16_cl --json "$OUT/train_base.json"

say "torchrun smoke run (1 GPU, NCCL)"
DATA="$(mktemp -d)/fashion_mnist"
RUN_DIR="$(mktemp -d)"
if [ -d /usr/share/datasets/fashion-mnist ]; then
    run 120 python -m conformer_vision prepare fashion-mnist "$DATA" --image_size 32 --limit_per_class "$LIMIT"
else  # no Debian dataset package on this machine: a synthetic 10-class folder tree of the same shape
    run 60 python - "$DATA" "$LIMIT" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", int(sys.argv[2])), ("val", int(sys.argv[2]) // 4 + 1)):
    for c in range(10):
        d = Path(sys.argv[1]) / split / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) // (c + 1)).save(d / f"{i}.png")
EOF
fi
run 300 torchrun --nproc_per_node 1 -m conformer_vision train --config configs/quickstart_fashion_mnist.yaml \
    --device_target "$TRAIN_DEVICE" --arch "$TRAIN_ARCH" --data_url "$DATA" --epochs 1 --warmup_length 0 --batch_size 128 --amp_level bf16 \
    --num_parallel_workers 4 --print_loss_every 5 --summary_root_dir "$RUN_DIR/summary" \
    --ckpt_root_dir "$RUN_DIR/ckpt" --best_ckpt_root_dir "$RUN_DIR/best" --overwrite true
grep -iE "img/s|images_per_s|nccl|gloo|finished|error|Top1" "$LOG" | tail -n 20 > "$OUT/torchrun.log"

say "summary"
python - "$OUT" "$NOMINAL_BF16_TFLOPS" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
out, nominal = Path(sys.argv[1]), float(sys.argv[2])
lines = ["| run | configuration | batch | img/s | x reference | model TFLOP/s | of measured GEMM peak | of nominal bf16 peak |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
for name in ("infer_tiny", "infer_base", "train_tiny", "train_base"):
    path = out / f"{name}.json"
    if not path.exists():
        lines.append(f"| {name} | (no results) | | | | | | |")
        continue
    results = json.loads(path.read_text())
    results = results if isinstance(results, list) else [results]
    base = results[0]["images_per_s"]
    for r in results:
        tflops = r["achieved_gflops"] / 1000
        lines.append(f"| {name} | {r['label']} | {r['spec']['batch_size']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s'] / base:.2f} | {tflops:.1f} | {100 * r['peak_fraction']:.1f}% of "
                     f"{r['gemm_peak_gflops'] / 1000:.0f} | {100 * tflops / nominal:.1f}% |")
text = "\n".join(lines)
print(text)
(out / "summary.md").write_text(text + "\n")
EOF
say "done: results in $OUT"
