"""``conformer predict DATA [DATA ...] --checkpoint CKPT_OR_ONNX [--output predictions.json] [--topk K]``.

DATA is an image or a folder of images (``--recursive`` for sub-folders). Prints ``PATH (class: N)``
per image and writes the specification's JSON ``{path: class}``; with ``--topk K`` each value is a
list of ``{"class", "name", "prob"}``, best first. Files that cannot be decoded are reported on
stderr and under ``"errors"`` in the JSON, the rest are predicted, and the exit status is 1.
"""

from __future__ import annotations

import argparse

HELP = "classify images (a file or a folder) with a checkpoint or an ONNX export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..runtime import AMP_LEVELS

    parser.add_argument("data", nargs="+", metavar="DATA", help="image file(s) or folder(s) of images")
    parser.add_argument("--checkpoint", "--onnx_path", dest="checkpoint", required=True, metavar="FILE",
                        help="checkpoint, weights file (with --arch) or .onnx export")  # fmt: skip
    parser.add_argument("--arch", default=None, help="architecture of a foreign weights file (e.g. conformer_tiny)")
    parser.add_argument("--output", default="predictions.json", metavar="FILE.json",
                        help="where to write the predictions (default predictions.json)")  # fmt: skip
    parser.add_argument("--topk", type=int, default=None, metavar="K",
                        help="write the K best classes (id, name, probability) instead of the class id")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default 0 = in-process)")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (ONNX: cuda = the CUDA provider)")
    parser.add_argument("--use_ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument("--amp", choices=list(AMP_LEVELS), default="O0",
                        help="checkpoints only: O0 float32 (default), bf16 or fp16 autocast (faster on GPUs; on a "
                             "CPU only with AMX or AVX512-FP16, see docs/benchmarks.md)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import sys

    from ..predict import collect_images, predict_paths, predictions_json, write_json
    from ..runtime import AMP_LEVELS, open_predictor

    files = collect_images(args.data, recursive=args.recursive)
    predictor = open_predictor(args.checkpoint, arch=args.arch, device=args.device, use_ema=args.use_ema,
                               amp_dtype=AMP_LEVELS[args.amp])  # fmt: skip
    topk = 1 if args.topk is None else args.topk
    results, errors = predict_paths(predictor, files, topk=topk, batch_size=args.batch_size, workers=args.workers)
    for path, preds in results.items():
        print(f"{path} (class: {preds[0]['class']})")
    for path, reason in errors.items():
        print(f"error: cannot read {path}: {reason}", file=sys.stderr)
    write_json(predictions_json(results, errors, args.topk), args.output)
    print(f"{len(results)} predictions written to {args.output}" + (f"; {len(errors)} files failed" if errors else ""),
          file=sys.stderr)  # fmt: skip
    return 1 if errors else 0
