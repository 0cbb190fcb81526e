"""``conformer predict DATA [DATA ...] --checkpoint CKPT_OR_ONNX [--output predictions.json] [--topk K]``,
or ``--pretrained imagenet --arch VARIANT`` for the published ImageNet-1k weights.

DATA is an image or a folder of images (``--recursive`` for sub-folders). Prints ``PATH (class: N)``
per image (with ``--topk K``, followed by the K best as ``  PROB%  NAME (class N)`` lines) and writes
the specification's JSON ``{path: class}`` to ``--output``; with ``--topk K`` each value is a list of
``{"class", "name", "prob"}``, best first. Files that cannot be decoded are
reported on stderr and in ``<output>.errors.json`` beside it (``{path: reason}``; ``{}`` when all were
read), never inside the predictions; the rest are predicted, and the exit status is then 1. Both
output files are checked before anything is loaded; existing files there are replaced (and said so).
An ``--arch`` that contradicts what the model file records is an error.
"""

from __future__ import annotations

import argparse

HELP = "classify images (a file or a folder) with a checkpoint, an ONNX export or the published ImageNet weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._common import add_amp_argument

    parser.add_argument("data", nargs="+", metavar="DATA", help="image file(s) or folder(s) of images")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint",
        "--onnx_path",
        dest="checkpoint",
        metavar="FILE",
        help="checkpoint, weights file (with --arch) or .onnx export",
    )
    model.add_argument(
        "--pretrained",
        metavar="imagenet|FILE",
        help="imagenet: the published ImageNet-1k weights of --arch (downloaded once into the "
        "torch hub cache; ImageNet class names), or a weights file as --checkpoint",
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="architecture of a foreign weights file or of --pretrained imagenet (e.g. conformer_tiny)",
    )
    parser.add_argument(
        "--output",
        default="predictions.json",
        metavar="FILE.json",
        help="where to write the predictions (default predictions.json; unreadable files go to "
        "FILE.errors.json beside it; existing files are replaced)",
    )
    parser.add_argument(
        "--topk",
        type=int,
        default=None,
        metavar="K",
        help="write the K best classes (id, name, probability) instead of the class id",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0 = in-process)")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (ONNX: cuda = the CUDA provider)")
    parser.add_argument("--use_ema", action="store_true", help="use the checkpoint's EMA weights")
    add_amp_argument(
        parser,
        "--amp",
        note="; checkpoints only (autocast is faster on GPUs, on a CPU only with AMX "
        "or AVX512-FP16, see docs/benchmarks.md)",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..paths import check_output_file
    from ..predict import collect_images, errors_path, predict_paths, predictions_json, write_json
    from ..runtime import AMP_DTYPES, open_predictor, with_imagenet_names
    from ._common import check_counts

    check_counts(batch_size=(args.batch_size, 1), workers=(args.workers, 0), topk=(args.topk, 1))
    output = check_output_file(args.output, "--output")
    errors_file = check_output_file(errors_path(output), "the error list beside --output")
    files = collect_images(args.data, recursive=args.recursive)
    predictor = open_predictor(
        args.checkpoint or args.pretrained,
        arch=args.arch,
        device=args.device,
        use_ema=args.use_ema,
        amp_dtype=AMP_DTYPES[args.amp_level],
    )
    with_imagenet_names(predictor)  # 1000 unnamed classes are ImageNet's: show their names
    topk = 1 if args.topk is None else args.topk
    results, errors = predict_paths(predictor, files, topk=topk, batch_size=args.batch_size, workers=args.workers)
    for path, preds in results.items():
        print(f"{path} (class: {preds[0]['class']})")
        if args.topk is not None:  # the K best, with their names: what a person reads
            for pred in preds:
                print(f"  {100 * pred['prob']:6.2f}%  {pred['name']} (class {pred['class']})")
    for path, reason in errors.items():
        print(f"error: cannot read {path}: {reason}", file=sys.stderr)
    replaced = [str(p) for p in (output, errors_file) if Path(p).exists()]
    write_json(predictions_json(results, args.topk), output)
    write_json(errors, errors_file)
    failed = f"; {len(errors)} files failed, listed in {errors_file}" if errors else ""
    note = f" (replaced the existing {' and '.join(replaced)})" if replaced else ""
    print(f"{len(results)} predictions written to {output}{failed}{note}", file=sys.stderr)
    return 1 if errors else 0
