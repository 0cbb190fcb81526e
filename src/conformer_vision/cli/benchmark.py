"""``conformer benchmark``: images/s, latency, memory, GFLOPs and GEMM-peak fraction of one
configuration, or of several side by side (``--compare``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "time inference or training of a variant (eager, torch.compile, onnxruntime; fp32/bf16/fp16)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..benchmark import BACKENDS, COMPARE_PRESETS, MODES, NETWORKS, ONNX_VARIANTS
    from ._common import add_amp_argument

    a = parser.add_argument
    a("--arch", default=None, help="variant, e.g. conformer_tiny_patch16 (see `conformer info`); not with --mode data")
    a("--batch_size", type=int, default=8, help="images per step (default 8)")
    a("--image_size", type=int, default=224, help="input side in pixels (default 224)")
    a(
        "--mode",
        choices=[*MODES, "data"],
        default="infer",
        help="infer: model(x) under inference_mode; train: one AdamW step; data: images/s of one loader worker "
        "decoding and augmenting for training (no model)",
    )
    a("--backend", choices=BACKENDS, default="eager", help="eager PyTorch, torch.compile, or onnxruntime (CPU)")
    add_amp_argument(parser, "--amp", dest="amp")
    a(
        "--network",
        choices=NETWORKS,
        default="model",
        help="reference: the model with the authors' explicit softmax attention; model: the model as built "
        "(default); optimized: optimize_for_inference's copy, what predict/eval run (inference only)",
    )
    a(
        "--onnx",
        choices=ONNX_VARIANTS,
        default="tuned",
        help="onnxruntime graph: tuned = this project's export of the optimized copy (default), plain = the "
        "reference network through the same exporter, int8 = tuned + int8 dynamic quantisation, int8_static = "
        "tuned + QDQ quantisation calibrated on 64 Fashion-MNIST train images",
    )
    a("--device", default="cpu", help="cpu or cuda[:N] (eager/compile)")
    a(
        "--channels_last",
        action="store_true",
        help="channels_last weights and inputs (eager/compile; the --compare "
        "presets of the optimized network use it in inference, as predict does)",
    )
    a(
        "--grad_checkpointing",
        action="store_true",
        help="with --mode train: recompute each block in the backward "
        "pass instead of storing its activations (less memory, more compute)",
    )
    a("--threads", type=int, default=None, help="intra-op threads for torch and onnxruntime (default: all cores)")
    a("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    a("--runs", type=int, default=5, help="timed steps; images/s uses their median (default 5)")
    a("--num_classes", type=int, default=1000, help="classes of the heads (default 1000)")
    a("--checkpoint", default=None, help="weights to load (default: random initialisation, seed 0)")
    a(
        "--compare",
        default=None,
        metavar="A,B,...",
        help=f"time these side by side, ratios to the first; names: {', '.join(COMPARE_PRESETS)}",
    )
    a(
        "--agreement",
        type=int,
        default=0,
        metavar="N",
        help="with --compare: top-1 agreement with the first configuration on N Fashion-MNIST test images",
    )
    a("--json", default=None, metavar="OUT", help="also write the results as JSON to OUT")
    from .benchmark_data import add_data_arguments

    add_data_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkSpec, compare, fashion_mnist_batch, format_comparison, format_result, parse_preset
    from ..errors import ConfigError

    if args.mode == "data":
        from .benchmark_data import run_data_benchmark

        return run_data_benchmark(args)
    if not args.arch:
        raise ConfigError("--arch is required (a variant, e.g. conformer_tiny_patch16; see `conformer info`)")
    base = BenchmarkSpec(
        arch=args.arch,
        batch_size=args.batch_size,
        image_size=args.image_size,
        mode=args.mode,
        backend=args.backend,
        amp=args.amp,
        network=args.network,
        onnx=args.onnx,
        device=args.device,
        channels_last=args.channels_last,
        num_classes=args.num_classes,
        checkpoint=args.checkpoint,
        grad_checkpointing=args.grad_checkpointing,
    )
    specs = parse_preset(base, [n.strip() for n in args.compare.split(",") if n.strip()]) if args.compare else [base]
    if args.agreement and not args.compare:
        raise ConfigError("--agreement needs --compare: agreement is measured against the first configuration")
    if args.warmup < 0 or args.runs < 1:
        raise ConfigError(f"--warmup must be >= 0 and --runs >= 1, got {args.warmup} and {args.runs}")
    images = fashion_mnist_batch(args.agreement, args.image_size) if args.agreement else None
    results = compare(specs, args.threads, args.warmup, args.runs, agreement_images=images)
    for r in results:
        print(format_result(r), end="\n\n")
    if len(results) > 1:
        print(format_comparison(results))
    if args.json:
        out = [r.to_dict() for r in results]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out if len(out) > 1 else out[0], indent=1))
    return 0
