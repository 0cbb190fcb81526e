"""Regenerate the tables of docs/benchmarks.md on this machine: every figure is a `conformer benchmark` run.

    PYTHONPATH=src python scripts/benchmark_docs.py [--threads 2] [--runs 5] [--checkpoint CKPT] [--only STEP ...]

Prints Markdown (and writes it to OUT/benchmarks.md; the JSON of every run to OUT/<step>.json, OUT =
runs/benchmarks by default): first the machine, as the tables depend on it (the CPU model, whether it
has AVX2, AVX512F, AVX512_BF16 and AMX, the threads used), then per step the exact command, the load
average before and after it, and a table of the configurations timed side by side. Steps:

  infer     tiny, 224, batch 8: reference, model, optimized predictor, bf16, fp16, onnxruntime plain /
            ours / int8 dynamic / int8 static, with top-1 agreement on 40 real images; then the
            optimized predictor against its torch.compile
  train     tiny, 224, batch 8: one training step of the reference, the model, bf16 autocast
  onnx      tiny, 224, batch 8: the plain ONNX export against ours (both OnnxPredictor sessions)
  variants  every variant, 224, batch 8: reference, optimized predictor, onnxruntime (ours)
  sweep     tiny, one process per point: eager (optimized) and onnxruntime against batch size and
            image size; draws docs/benchmark_scaling.png

On a machine that other jobs use, only the ratios within one table are meaningful (each table is one
process timing its configurations in interleaved rounds); absolute images/s move with the load.
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
sys.path.insert(0, str(ROOT / "src"))

from conformer_vision.probes import cpu_info  # noqa: E402  (after the path: the script runs from a checkout)

TINY = ["--arch", "conformer_tiny_patch16", "--batch_size", "8", "--image_size", "224"]
VARIANTS = ["conformer_tiny_patch16", "conformer_small_patch16", "conformer_small_patch32", "conformer_base_patch16"]
BATCHES = [1, 2, 4, 8, 16]
SIZES = [128, 160, 224, 288, 352]
STEPS = ("infer", "train", "onnx", "variants", "sweep")


class Report:
    """Markdown printed as it is produced and collected for OUT/benchmarks.md."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines = path, []

    def add(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)
        self.path.write_text("\n".join(self.lines) + "\n")


def machine_header(threads: int) -> str:
    """The CPU and the thread count, as detected here."""
    info = cpu_info()
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items()) or "flags unknown"
    return f"**CPU**: {info['model']}; {flags}; {info['cores']} logical CPUs; {threads} threads per run."


def load() -> str:
    return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())


def bench(report: Report, out: Path, name: str, args: list[str], threads: int) -> list[dict]:
    """Run one `conformer benchmark` command, add its command, load and table, return its JSON results."""
    path = out / f"{name}.json"
    cmd = [sys.executable, "-m", "conformer_vision", "benchmark", *args, "--threads", str(threads), "--json", str(path)]
    before, start = load(), time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    shown = "conformer benchmark " + " ".join(cmd[4:-2])
    if proc.returncode != 0:
        report.add(f"\n`{shown}` failed (exit {proc.returncode}):\n```\n{proc.stderr[-2000:]}\n```")
        return []
    data = json.loads(path.read_text())
    results = data if isinstance(data, list) else [data]
    took = f"{time.time() - start:.0f} s"
    report.add(f"\n```bash\n{shown}\n```\n\nLoad average (1/5/15 min) before: {before}; after: {load()}; {took}.")
    report.add("\n" + table(results))
    return results


def table(results: list[dict]) -> str:
    """A Markdown table: images/s, ratios to the first row (median / best run), GEMM-peak fraction,
    top-1 agreement with the first row, setup time."""
    first = results[0]
    rows = [
        "| configuration | mode | images/s (median) | x first: median / best run | GEMM-peak fraction "
        "| top-1 agreement | setup s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        agree = f"{100 * r['extra']['top1_agreement']:.1f}%" if "top1_agreement" in r["extra"] else "-"
        setup = f"{r['setup_s']:.0f} ({r['setup_label']})" if r["setup_label"] else "-"
        median = r["images_per_s"] / first["images_per_s"]
        best = r["best_images_per_s"] / first["best_images_per_s"]
        peak = f"{100 * r['peak_fraction']:.0f}% of {r['gemm_peak_gflops']:.0f} GFLOP/s"
        rows.append(
            f"| {r['label']} | {r['spec']['mode']} | {r['images_per_s']:.2f} | {median:.2f} / {best:.2f} | {peak} "
            f"| {agree} | {setup} |"
        )
    return "\n".join(rows)


def step_infer(report: Report, out: Path, threads: int, runs: int, checkpoint: str | None) -> None:
    weights = ["--checkpoint", checkpoint] if checkpoint else []
    presets = "reference,eager,optimized,bf16,fp16,onnx_plain,onnxruntime,onnx_int8,onnx_int8_static"
    report.add("\n### Inference" + ("" if checkpoint else " (random weights: agreement on random logits)"))
    args = [*TINY, *weights, "--warmup", "2", "--runs", str(runs), "--agreement", "40", "--compare", presets]
    bench(report, out, "infer", args, threads)
    report.add("\n`torch.compile` (Inductor) of the optimized predictor; the setup column is the compile time:")
    args = [*TINY, "--warmup", "2", "--runs", str(runs), "--compare", "optimized,compile"]
    bench(report, out, "compile", args, threads)


def step_train(report: Report, out: Path, threads: int, runs: int) -> None:
    report.add("\n### Training step")
    args = [*TINY, "--mode", "train", "--warmup", "2", "--runs", str(runs), "--compare", "reference,eager,bf16"]
    bench(report, out, "train", args, threads)


def step_onnx(report: Report, out: Path, threads: int, runs: int) -> None:
    report.add("\n### ONNX: the plain export against ours")
    args = [*TINY, "--warmup", "2", "--runs", str(3 * runs), "--compare", "onnx_plain,onnxruntime"]
    bench(report, out, "onnx", args, threads)


def step_variants(report: Report, out: Path, threads: int, runs: int) -> None:
    report.add("\n### Every variant")
    for arch in VARIANTS:
        args = ["--arch", arch, "--batch_size", "8", "--warmup", "1", "--runs", str(runs)]
        bench(report, out, f"variant_{arch}", [*args, "--compare", "reference,optimized,onnxruntime"], threads)


def step_sweep(report: Report, out: Path, threads: int) -> None:
    """One process per point (clean memory figures), then the plot."""
    report.add("\n### Scaling with batch size and image size (one process per point)")
    points = [("batch", b, 224) for b in BATCHES] + [("size", 4, s) for s in SIZES]
    rows = []
    for kind, batch, size in points:
        for backend in ("optimized", "onnxruntime"):
            shape = ["--batch_size", str(batch), "--image_size", str(size)]
            args = ["--arch", "conformer_tiny_patch16", *shape, "--compare", backend, "--warmup", "2", "--runs", "3"]
            res = bench(report, out / "sweep", f"{kind}_{backend}_b{batch}_s{size}", args, threads)
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
    panels = [("batch", "batch_size", "batch size (224x224)"), ("size", "image_size", "image side, px (batch 4)")]
    for col, (kind, x_key, x_label) in enumerate(panels):
        for backend, style in (("optimized", "o-"), ("onnxruntime", "s--")):
            pts = sorted((r["spec"][x_key], r) for r in rows if r["kind"] == kind and r["backend"] == backend)
            if not pts:
                continue
            xs = [x for x, _ in pts]
            axes[0, col].plot(xs, [r["images_per_s"] for _, r in pts], style, label=f"{backend} fp32")
            axes[1, col].plot(xs, [r["peak_memory_mb"] for _, r in pts], style, label=f"{backend} fp32")
            ref = [r for x, r in pts if r["spec"]["image_size"] == 224]
            if kind == "size" and ref and backend == "optimized":
                scale = ref[0]["images_per_s"] * ref[0]["gflops_per_image"]
                flop_line = [scale / r["gflops_per_image"] for _, r in pts]
                axes[0, col].plot(xs, flop_line, ":", color="grey", label="FLOP-proportional (optimized)")
        axes[0, col].set_ylabel("images/s (median)")
        axes[1, col].set_ylabel("process peak RSS, MB")
        for ax in axes[:, col]:
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    cpu = rows[0]["cpu"]["model"] if rows and rows[0].get("cpu") else "this CPU"
    threads = rows[0]["threads"] if rows else "?"
    fig.suptitle(f"conformer_tiny_patch16 on {cpu}, {threads} threads: throughput and memory")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per run (default: all CPUs)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per table (default 5)")
    parser.add_argument("--checkpoint", default=None, help="a trained tiny checkpoint (meaningful agreement figures)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "benchmarks"))
    parser.add_argument("--only", nargs="*", choices=STEPS, default=None, help="steps to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "sweep").mkdir(parents=True, exist_ok=True)
    report = Report(out / "benchmarks.md")
    report.add(machine_header(args.threads))
    steps = args.only or list(STEPS)
    if "infer" in steps:
        step_infer(report, out, args.threads, args.runs, args.checkpoint)
    if "train" in steps:
        step_train(report, out, args.threads, args.runs)
    if "onnx" in steps:
        step_onnx(report, out, args.threads, args.runs)
    if "variants" in steps:
        step_variants(report, out, args.threads, args.runs)
    if "sweep" in steps:
        step_sweep(report, out, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
