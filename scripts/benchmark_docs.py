"""Regenerate the figures of docs/benchmarks.md: every run is a `conformer benchmark` command.

    PYTHONPATH=src python scripts/benchmark_docs.py [--threads 2] [--checkpoint CKPT] [--only NAME ...]

Steps (each prints its exact command and writes OUT/<name>.json, OUT = runs/benchmarks by default):
  targets_infer / targets_train / compile: the issue's speed targets, tiny 224 batch 8, side by side;
  variant_<arch>: reference / eager fp32 / eager bf16 / onnxruntime for every variant (224, batch 8);
  sweep: one process per point (clean memory figures): tiny eager fp32 and onnxruntime against batch
  size (224) and image size (batch 4); then docs/benchmark_scaling.png and a Markdown summary.
About 15 minutes of CPU on 2 quiet cores (several times that on a shared, busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["conformer_tiny_patch16", "conformer_small_patch16", "conformer_small_patch32", "conformer_base_patch16"]
BATCHES = [1, 2, 4, 8, 16]
SIZES = [128, 160, 224, 288, 352]


def bench(out: Path, name: str, args: list[str], threads: int) -> list[dict]:
    """Run one `conformer benchmark` command, print it and its table, return its JSON results."""
    path = out / f"{name}.json"
    cmd = [sys.executable, "-m", "conformer_vision", "benchmark", *args, "--threads", str(threads), "--json", str(path)]
    shown = "conformer benchmark " + " ".join(cmd[4:-2])
    print(f"\n## {name}\n$ {shown}", flush=True)
    start = time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    print("\n".join(table) if table else proc.stdout[-3000:], f"\n({time.time() - start:.0f} s)", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], flush=True)
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def targets(out: Path, threads: int, checkpoint: str | None) -> None:
    base = ["--arch", "conformer_tiny_patch16", "--batch_size", "8", "--image_size", "224"]
    weights = ["--checkpoint", checkpoint] if checkpoint else []
    bench(out, "targets_infer", [*base, *weights, "--warmup", "2", "--runs", "7", "--agreement", "200", "--compare",
                                 "reference,eager,bf16,fp16,onnx_plain,onnxruntime,onnx_int8"], threads)  # fmt: skip
    if checkpoint:  # the same agreement on random weights (a weaker test: say which is which)
        bench(out, "agreement_random", [*base, "--warmup", "1", "--runs", "1", "--agreement", "200",
                                        "--compare", "reference,eager,bf16,fp16,onnxruntime,onnx_int8"], threads)  # fmt: skip
    bench(out, "targets_train", [*base, "--mode", "train", "--warmup", "2", "--runs", "5",
                                 "--compare", "reference,eager,bf16"], threads)  # fmt: skip
    bench(out, "compile", [*base, "--warmup", "2", "--runs", "3", "--compare", "reference,eager,compile"], threads)


def variants(out: Path, threads: int) -> None:
    for arch in VARIANTS:
        bench(out, f"variant_{arch}", ["--arch", arch, "--batch_size", "8", "--warmup", "1", "--runs", "3",
                                       "--compare", "reference,eager,bf16,onnxruntime"], threads)  # fmt: skip


def sweep(out: Path, threads: int) -> None:
    points = [("batch", b, 224) for b in BATCHES] + [("size", 4, s) for s in SIZES]
    rows = []
    for kind, batch, size in points:
        for backend in ("eager", "onnxruntime"):
            res = bench(out / "sweep", f"{kind}_{backend}_b{batch}_s{size}", [
                "--arch", "conformer_tiny_patch16", "--batch_size", str(batch), "--image_size", str(size),
                "--backend", backend, "--warmup", "2", "--runs", "3"], threads)  # fmt: skip
            if res:
                rows.append({"kind": kind, "backend": backend, **res[0]})
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))
    plot_sweep(rows, ROOT / "docs" / "benchmark_scaling.png")


def plot_sweep(rows: list[dict], path: Path) -> None:
    """2x2: images/s and peak RSS against batch size (224 px) and image size (batch 4). The dotted
    line is what FLOPs alone predict (the 224 px speed scaled by GFLOPs(224) / GFLOPs(side))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (kind, x_key, x_label) in enumerate([("batch", "batch_size", "batch size (224x224)"),
                                                  ("size", "image_size", "image side, px (batch 4)")]):  # fmt: skip
        for backend, style in (("eager", "o-"), ("onnxruntime", "s--")):
            pts = sorted((r["spec"][x_key], r) for r in rows if r["kind"] == kind and r["backend"] == backend)
            if not pts:
                continue
            xs = [x for x, _ in pts]
            axes[0, col].plot(xs, [r["images_per_s"] for _, r in pts], style, label=f"{backend} fp32")
            axes[1, col].plot(xs, [r["peak_memory_mb"] for _, r in pts], style, label=f"{backend} fp32")
            ref = [r for x, r in pts if r["spec"]["image_size"] == 224]
            if kind == "size" and ref:
                scale = ref[0]["images_per_s"] * ref[0]["gflops_per_image"]
                axes[0, col].plot(xs, [scale / r["gflops_per_image"] for _, r in pts], ":", color="grey",
                                  label=f"FLOP-proportional ({backend})" if backend == "eager" else None)  # fmt: skip
        axes[0, col].set_ylabel("images/s (median)")
        axes[1, col].set_ylabel("process peak RSS, MB")
        for ax in axes[:, col]:
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    threads = rows[0]["threads"] if rows else "?"
    fig.suptitle(f"conformer_tiny_patch16, {threads} CPU thread(s) on a shared machine: throughput and memory")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="briefly trained tiny checkpoint for the agreement figures")
    parser.add_argument("--out", default=str(ROOT / "runs" / "benchmarks"))
    parser.add_argument("--only", nargs="*", choices=["targets", "variants", "sweep", "plot"], default=None)
    args = parser.parse_args()
    out = Path(args.out)
    (out / "sweep").mkdir(parents=True, exist_ok=True)
    steps = args.only or ["targets", "variants", "sweep"]
    if "targets" in steps:
        targets(out, args.threads, args.checkpoint)
    if "variants" in steps:
        variants(out, args.threads)
    if "sweep" in steps:
        sweep(out, args.threads)
    if "plot" in steps:  # redraw from an earlier sweep
        plot_sweep(json.loads((out / "sweep.json").read_text()), ROOT / "docs" / "benchmark_scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
