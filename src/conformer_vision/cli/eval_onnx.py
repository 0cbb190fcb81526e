"""``conformer eval-onnx DATA --onnx_path MODEL.onnx [--image_size 224] [-m CPU|GPU] [--prefetch 16]``.

The specification's ONNX evaluation: DATA is an ImageFolder split (``DATA/<class>/<image>``); the
classes and preprocessing come from the ONNX metadata (``--image_size`` overrides the input size).
A foreign graph without metadata is read from its input: a fixed size or a single (grey) channel is
used as the graph says. Prints ``eval results: {'Loss': ..., 'Top1-Acc': ..., 'Top5-Acc': ...}``, the
samples counted and the input size, and the per-head lines. Unreadable images are dropped, counted
and named; more than ``--max_bad_files_fraction`` of them stop the evaluation.
"""

from __future__ import annotations

import argparse

HELP = "evaluate an ONNX export with onnxruntime on an image folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATA", help="validation folder, one sub-folder per class")
    parser.add_argument("--onnx_path", required=True, metavar="MODEL.onnx", help="the exported model")
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="input size, S or H W (default: the size in the ONNX metadata, else 224)",
    )
    parser.add_argument(
        "-m",
        "--device",
        type=str.upper,
        choices=("CPU", "GPU"),
        default="CPU",
        help="onnxruntime execution provider (default CPU)",
    )
    parser.add_argument("--prefetch", type=int, default=16, help="batches decoded ahead of the model (default 16)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per onnxruntime call (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default 2; 0 = in-process)")
    parser.add_argument(
        "--max_bad_files_fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="unreadable images tolerated (dropped, counted and named; default 0.01 of the "
        "images) before the evaluation stops",
    )
    parser.add_argument(
        "--output",
        metavar="FILE.json",
        default=None,
        help="also write the metrics as JSON (an existing file is replaced)",
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    from ._common import add_amp_argument

    add_amp_argument(
        parser, note="; an ONNX graph runs in the precision it was exported in, so only the float32 names apply"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..evaluate import evaluate_dataset, format_eval_line, format_report, write_report
    from ..paths import check_output_file
    from ..runtime import AMP_DTYPES, OnnxPredictor
    from ._common import check_counts

    if AMP_DTYPES[args.amp_level] is not None:
        raise ConfigError(
            f"--amp_level {args.amp_level} applies to checkpoints run by PyTorch; an ONNX graph runs in "
            "the precision it was exported in (use O0, or export with --quantize for int8)"
        )

    size = args.image_size
    if size is not None and len(size) not in (1, 2):
        raise ConfigError(f"--image_size takes one value or two (H W), got {size}")
    check_counts(
        batch_size=(args.batch_size, 1),
        workers=(args.workers, 0),
        prefetch=(args.prefetch, 1),
        image_size=(min(size) if size else None, 1),
    )
    if not 0.0 <= args.max_bad_files_fraction <= 1.0:
        raise ConfigError(f"--max_bad_files_fraction must be in [0, 1], got {args.max_bad_files_fraction}")
    if args.output:
        check_output_file(args.output, "--output")
    hw = None if size is None else (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    predictor = OnnxPredictor(args.onnx_path, args.device)
    if hw is not None:
        import dataclasses

        predictor.check_input_size(hw)
        predictor.preprocess = dataclasses.replace(predictor.preprocess, input_size=hw)
    h, w = predictor.preprocess.input_size
    print(f"evaluating {args.onnx_path} at {h}x{w} ({'--image_size' if hw else 'from the model file'})")
    result = evaluate_dataset(
        predictor,
        args.dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        prefetch=args.prefetch,
        progress=args.progress,
        max_bad_files_fraction=args.max_bad_files_fraction,
    )
    print(format_eval_line(result))
    print(format_report(result))
    if args.output:
        replaced = Path(args.output).exists()
        write_report(result, args.output, {"onnx_path": args.onnx_path, "val_root": args.dataset})
        print(f"metrics written to {args.output}" + (" (replacing the file that was there)" if replaced else ""))
    return 0
