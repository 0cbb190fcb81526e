"""``conformer eval-onnx DATA --onnx_path MODEL.onnx [--image_size 224] [-m CPU|GPU] [--prefetch 16]``.

The specification's ONNX evaluation: DATA is an ImageFolder split (``DATA/<class>/<image>``); the
classes and preprocessing come from the ONNX metadata (``--image_size`` overrides the input size).
Prints ``eval results: {'Loss': ..., 'Top1-Acc': ..., 'Top5-Acc': ...}`` and the per-head lines.
"""

from __future__ import annotations

import argparse

HELP = "evaluate an ONNX export with onnxruntime on an image folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATA", help="validation folder, one sub-folder per class")
    parser.add_argument("--onnx_path", required=True, metavar="MODEL.onnx", help="the exported model")
    parser.add_argument("--image_size", type=int, nargs="+", default=None, metavar="S",
                        help="input size, S or H W (default: the size in the ONNX metadata, else 224)")  # fmt: skip
    parser.add_argument("-m", "--device", type=str.upper, choices=("CPU", "GPU"), default="CPU",
                        help="onnxruntime execution provider (default CPU)")  # fmt: skip
    parser.add_argument("--prefetch", type=int, default=16, help="batches decoded ahead of the model (default 16)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per onnxruntime call (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default 2; 0 = in-process)")
    parser.add_argument("--output", metavar="FILE.json", default=None, help="also write the metrics as JSON")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluate import evaluate_dataset, format_eval_line, format_report, write_report
    from ..runtime import OnnxPredictor

    size = args.image_size
    if size is not None and len(size) not in (1, 2):
        raise ConfigError(f"--image_size takes one value or two (H W), got {size}")
    if args.prefetch < 1:
        raise ConfigError(f"--prefetch must be >= 1, got {args.prefetch}")
    predictor = OnnxPredictor(args.onnx_path, args.device)
    if size is not None:
        import dataclasses

        hw = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
        predictor.preprocess = dataclasses.replace(predictor.preprocess, input_size=hw)
    result = evaluate_dataset(
        predictor, args.dataset, batch_size=args.batch_size, workers=args.workers, prefetch=args.prefetch,
        progress=args.progress,
    )  # fmt: skip
    print(format_eval_line(result))
    print(format_report(result))
    if args.output:
        write_report(result, args.output, {"onnx_path": args.onnx_path, "val_root": args.dataset})
    return 0
