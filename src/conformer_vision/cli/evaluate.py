"""``conformer eval --config CFG --checkpoint CKPT [--OPTION VALUE ...]``: metrics on the val split.

The validation set is ``<data_url>/<val_dir>`` (``val_num_samples``, ``batch_size``,
``num_parallel_workers`` from the config; every option can be overridden). ``--checkpoint`` takes
this project's checkpoints, foreign weights (with ``--arch``/the config's arch) and ``.onnx``
exports (run by onnxruntime). Prints the specification's ``eval results: {...}`` line, the per-head
results and a per-class table.
"""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint or ONNX model on the validation split of the config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import add_config_arguments

    parser.add_argument("--output", metavar="FILE.json", default=None, help="also write the metrics as JSON")
    parser.add_argument("--confusion_matrix", metavar="FILE.png", default=None,
                        help="draw the confusion matrix of the fused prediction to this image")  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import config_from_args
    from ..errors import ConfigError
    from ..evaluate import evaluate_dataset, format_eval_line, format_report, write_report
    from ..runtime import open_predictor

    cfg = config_from_args(vars(args))
    checkpoint = cfg.checkpoint or cfg.pretrained
    if not checkpoint:
        raise ConfigError("nothing to evaluate: pass --checkpoint FILE (a checkpoint or an .onnx export)")
    if checkpoint == "auto":
        raise ConfigError("--checkpoint auto is for resuming training; name the checkpoint file to evaluate")
    device = "auto" if cfg.device_target == "auto" else str(cfg.device)
    predictor = open_predictor(
        checkpoint, arch=cfg.arch, device=device, use_ema=cfg.use_ema, amp_dtype=cfg.amp_dtype,
        channels_last=cfg.channels_last,
    )  # fmt: skip
    val_root = Path(cfg.data_url) / cfg.val_dir
    result = evaluate_dataset(
        predictor, val_root, batch_size=cfg.batch_size, workers=cfg.num_parallel_workers,
        num_samples=cfg.val_num_samples, progress=args.progress, max_bad_fraction=cfg.max_bad_files_fraction,
    )  # fmt: skip
    print(format_eval_line(result))
    print(format_report(result))
    if args.output:
        write_report(result, args.output, {"checkpoint": str(checkpoint), "val_root": str(val_root)})
        print(f"metrics written to {args.output}")
    if args.confusion_matrix:
        from ..plots import plot_confusion_matrix

        names = [row["name"] for row in result["per_class"]]
        print(f"confusion matrix drawn to {plot_confusion_matrix(result['confusion'], names, args.confusion_matrix)}")
    return 0
