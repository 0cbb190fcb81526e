"""``conformer eval --config CFG --checkpoint CKPT [--OPTION VALUE ...]``: metrics on the val split.

The validation set is ``<data_url>/<val_dir>``, or the val shards with ``data_format: webdataset`` (``val_num_samples``, ``batch_size``,
``num_parallel_workers``, ``max_bad_files_fraction`` from the config; every option can be
overridden). ``--checkpoint`` takes this project's checkpoints, foreign weights (with ``--arch``/the
config's arch) and ``.onnx`` exports (run by onnxruntime). Prints the specification's
``eval results: {...}`` line, the samples counted and the input size used, the per-head results and
a per-class table.

The model file is the truth about the model: ``--arch``/``--num_classes`` on the command line that
contradict it are an error; the config file's values that differ are a warning (the file's are
used). ``--image_size`` (and ``--interpolation``, ``--crop_pct``) on the command line are honoured.
Unreadable images are dropped, counted and named, never replaced by others. ``--output`` and
``--confusion_matrix`` are checked before anything is loaded; an existing file there is replaced.
"""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint or ONNX model on the validation split of the config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .options import add_config_arguments

    parser.add_argument("--output", metavar="FILE.json", default=None, help="also write the metrics as JSON")
    parser.add_argument(
        "--confusion_matrix",
        metavar="FILE.png",
        default=None,
        help="draw the confusion matrix of the fused prediction to this image",
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..evaluate import eval_source, evaluate_dataset, format_eval_line, format_report, write_report
    from ..paths import check_output_file
    from ..runtime import AMP_DTYPES, open_predictor, resolve_device
    from ._common import config_file_keys, request_levels, resolve_preprocess
    from .options import config_from_args

    given = {key for key in vars(args) if key not in ("output", "confusion_matrix", "progress", "config")}
    cfg = config_from_args(vars(args))
    checkpoint = cfg.checkpoint or cfg.pretrained
    if not checkpoint:
        raise ConfigError("nothing to evaluate: pass --checkpoint FILE (a checkpoint or an .onnx export)")
    if checkpoint == "auto":
        raise ConfigError("--checkpoint auto is for resuming training; name the checkpoint file to evaluate")
    for option in ("output", "confusion_matrix"):
        if getattr(args, option):
            check_output_file(getattr(args, option), f"--{option}")
    in_file = config_file_keys(args.config)
    levels, sources = request_levels(given, in_file, args.config)
    # auto stays auto: an ONNX file then picks its execution provider the same way
    device = cfg.device_target
    if device != "auto":
        device = resolve_device(device, cfg.device_id, "device_target")
    predictor = open_predictor(
        checkpoint,
        arch=vars(args).get("arch", cfg.arch),
        device=device,
        use_ema=cfg.use_ema,
        amp_dtype=AMP_DTYPES[cfg.amp_level],
        channels_last=cfg.channels_last,
        num_classes=cfg.num_classes if levels["num_classes"] != "ignore" else None,
        contradiction=levels,
        source=sources,
    )
    recorded = predictor.preprocess if predictor.preprocess_recorded else None
    preprocess, size_note = resolve_preprocess(
        cfg, given, in_file, args.config, recorded, predictor.preprocess, checkpoint
    )
    predictor.check_input_size(preprocess.input_size)
    predictor.preprocess = preprocess
    print(f"evaluating {checkpoint} at {size_note}")
    val_root = eval_source(cfg)  # <data_url>/<val_dir>, or the val shards (data_format: webdataset)
    result = evaluate_dataset(
        predictor,
        val_root,
        batch_size=cfg.batch_size,
        workers=cfg.num_parallel_workers,
        num_samples=cfg.val_num_samples,
        progress=args.progress,
        max_bad_files_fraction=cfg.max_bad_files_fraction,
    )
    print(format_eval_line(result))
    print(format_report(result))
    if args.output:
        replaced = Path(args.output).exists()
        write_report(result, args.output, {"checkpoint": str(checkpoint), "val_root": str(val_root)})
        print(f"metrics written to {args.output}" + (" (replacing the file that was there)" if replaced else ""))
    if args.confusion_matrix:
        from ..plots import plot_confusion_matrix

        names = [row["name"] for row in result["per_class"]]
        replaced = Path(args.confusion_matrix).exists()
        drawn = plot_confusion_matrix(result["confusion"], names, args.confusion_matrix)
        print(f"confusion matrix drawn to {drawn}" + (" (replacing the file that was there)" if replaced else ""))
    return 0
