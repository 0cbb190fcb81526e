"""``conformer export --checkpoint CKPT [--arch NAME] --file_format FMT [--output PATH]``.

The specification's spelling works too: ``--config CFG --pretrained CKPT --file_format ONNX
--arch conformer_tiny`` (every config option is accepted; the output defaults to ``<arch>.onnx`` in
the current directory). Formats: ONNX (dynamic batch and spatial size, class names and
preprocessing in the metadata), TORCHSCRIPT, EXPORTED_PROGRAM (.pt2), SAFETENSORS, HF_HUB (a folder
in timm's Hugging Face Hub layout: ``timm.create_model("local-dir:DIR", pretrained=True)``). The
export checks itself against PyTorch and fails (exit 2, the file renamed ``.failed``) on a mismatch.

``--quantize int8_dynamic`` / ``int8_static`` (ONNX only) writes an int8 graph (``quantize``);
static quantisation calibrates on ``--calibration DIR`` (``--calibration_size`` images).

The output path is checked before anything is loaded (an existing file there is replaced, and the
command says so; an HF_HUB folder must be new, empty, or a hub folder this toolkit wrote). The
checkpoint is the truth about the model: an ``--arch``/``--num_classes`` on the command line that
contradicts it is an error (an export named ``conformer_tiny.onnx`` never holds
another variant), the config file's differing values are a warning. ``--image_size``,
``--interpolation`` and ``--crop_pct`` on the command line set the preprocessing recorded in the
export; the config file's fill in for checkpoints that record none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a checkpoint to ONNX, TorchScript, a torch.export program, safetensors or a Hugging Face Hub folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..quantize import DEFAULT_CALIBRATION_SIZE, QUANTIZE_MODES
    from .options import add_config_arguments

    parser.add_argument(
        "--output",
        metavar="PATH",
        default=None,
        help="output file (default: <arch>.onnx / .torchscript.pt / .pt2 / .safetensors in the cwd), "
        "or folder for HF_HUB (default: <arch>)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript", "auto"),
        default="dynamo",
        help="ONNX exporter: torch.export-based (default), the legacy tracer, or dynamo with fallback to the tracer",
    )
    parser.add_argument("--no_check", action="store_true", help="skip the self-check against PyTorch")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help="ONNX only: int8_dynamic (MatMul weights int8, activations quantised at run time; "
        "no calibration, the faster here) or int8_static (QDQ, ranges calibrated on "
        "--calibration images)",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        default=None,
        help="int8_static: folder (or ImageFolder tree) of representative images",
    )
    parser.add_argument(
        "--calibration_size",
        type=int,
        default=DEFAULT_CALIBRATION_SIZE,
        metavar="N",
        help=f"int8_static: calibration images used (default {DEFAULT_CALIBRATION_SIZE}, "
        "spread over the class folders)",
    )
    add_config_arguments(parser)


_OWN_OPTIONS = ("output", "opset", "exporter", "no_check", "quantize", "calibration", "calibration_size", "config")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..data.transforms import Preprocess
    from ..errors import ConfigError
    from ..export import FILE_FORMATS, default_output, export_model
    from ..paths import check_output_dir
    from ..runtime import default_preprocess
    from ._common import config_file_keys, request_levels, resolve_preprocess
    from .options import config_from_args

    raw = vars(args)
    given = {key for key in raw if key not in _OWN_OPTIONS}
    cfg = config_from_args(raw)
    checkpoint = cfg.checkpoint or cfg.pretrained
    if not checkpoint:
        raise ConfigError("nothing to export: pass --checkpoint FILE (or --pretrained FILE)")
    fmt = cfg.file_format.upper()
    if fmt not in FILE_FORMATS:
        raise ConfigError(f"file_format must be one of {', '.join(FILE_FORMATS)}, got {cfg.file_format!r}")
    hub = fmt == "HF_HUB"
    output = Path(args.output) if args.output else None
    if output is not None and not output.suffix:
        output = output.with_name(output.name + FILE_FORMATS[fmt])
    if output is None:  # the default name needs the architecture; its folder, the current one, is checked now
        check_output_dir(Path.cwd(), "the current folder (the default --output)")
    replaced = output is not None and _replaces(output, hub)
    in_file = config_file_keys(args.config)
    levels, sources = request_levels(given, in_file, args.config)
    # As spelt on the command line; the config's arch serves foreign weights that name none.
    arch = raw["arch"] if "arch" in given else cfg.arch if args.config else None
    try:
        loaded = load_model(
            checkpoint,
            arch=arch,
            use_ema=cfg.use_ema,
            num_classes=cfg.num_classes if levels["num_classes"] != "ignore" else None,
            contradiction=levels,
            source=sources,
        )
    except ValueError as e:  # an unknown --arch name
        raise ConfigError(str(e)) from None
    recorded = Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else None
    preprocess, size_note = resolve_preprocess(
        cfg, given, in_file, args.config, recorded, default_preprocess(loaded.model), checkpoint
    )
    if output is None:  # the specification: named after the architecture as the user spelt it
        output = default_output(raw["arch"] if "arch" in given else loaded.arch, fmt)
        replaced = _replaces(output, hub)
    report: dict = {}
    path = export_model(
        loaded.model,
        arch=loaded.arch,
        file_format=fmt,
        output=output,
        opset=args.opset,
        check=not args.no_check,
        preprocess=preprocess,
        exporter=args.exporter,
        quantize=args.quantize,
        calibration=args.calibration,
        calibration_size=args.calibration_size,
        class_names=loaded.class_names,
        report=report,
    )
    if report:
        print(_check_line(report, args.quantize))
    print(
        f"exported {loaded.arch} ({fmt}, input {size_note}) to {path}"
        + (f" (replacing the {'hub folder' if hub else 'file'} that was there)" if replaced else "")
    )
    if hub:
        print(
            f'load it with timm.create_model("local-dir:{path}", pretrained=True) after import conformer_vision, '
            "or push the folder to the Hugging Face Hub and use hf-hub:user/repo"
        )
    return 0


def _replaces(output: Path, hub: bool) -> bool:
    """Whether writing ``output`` replaces a file or hub folder (checked writable, and for a hub
    folder, one the toolkit wrote)."""
    from ..hub import check_hub_output
    from ..paths import check_output_file

    return check_hub_output(output) if hub else check_output_file(output, "--output").exists()


def _check_line(report: dict, quantize: str) -> str:
    """The line that says how the exported graph compares with the PyTorch model."""
    if report.get("quantized"):
        real = f" (the last: {report['images']} calibration images)" if report["images"] else ""
        return (
            f"{quantize} graph checked against the float PyTorch model on inputs {report['inputs']}{real}: "
            f"top-1 agreement {report['top1_agree']}, max |logit diff| {report['max_abs_diff']:.3g} "
            f"({report['max_rel_diff']:.3g} of the logit scale); int8 is not held to the float tolerance, "
            "only gross mismatches fail"
        )
    return (
        f"checked against PyTorch on inputs {report['inputs']}: max |diff| {report['max_abs_diff']:.3g} "
        f"({report['max_rel_diff']:.3g} of the logit scale), top-1 agreement {report['top1_agree']}"
    )
