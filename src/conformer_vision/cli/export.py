"""``conformer export --checkpoint CKPT [--arch NAME] --file_format FMT [--output PATH]``.

The specification's spelling works too: ``--config CFG --pretrained CKPT --file_format ONNX
--arch conformer_tiny`` (every config option is accepted; the output defaults to ``<arch>.onnx`` in
the current directory). Formats: ONNX (dynamic batch and spatial size, class names and
preprocessing in the metadata), TORCHSCRIPT, EXPORTED_PROGRAM (.pt2), SAFETENSORS. The export
checks itself against PyTorch and fails (exit 2, the file renamed ``.failed``) on a mismatch.

``--quantize int8_dynamic`` / ``int8_static`` (ONNX only) writes an int8 graph (``quantize``);
static quantisation calibrates on ``--calibration DIR`` (``--calibration_size`` images).
"""

from __future__ import annotations

import argparse

HELP = "export a checkpoint to ONNX, TorchScript, a torch.export program or safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import add_config_arguments
    from ..quantize import DEFAULT_CALIBRATION_SIZE, QUANTIZE_MODES

    parser.add_argument("--output", metavar="PATH", default=None,
                        help="output file (default: <arch>.onnx / .torchscript.pt / .pt2 / .safetensors in the cwd)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript", "auto"), default="dynamo",
                        help="ONNX exporter: torch.export-based (default), the legacy tracer, or dynamo with "
                             "fallback to the tracer")  # fmt: skip
    parser.add_argument("--no_check", action="store_true", help="skip the self-check against PyTorch")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                        help="ONNX only: int8_dynamic (MatMul weights int8, activations quantised at run time; "
                             "no calibration, the faster here) or int8_static (QDQ, ranges calibrated on "
                             "--calibration images)")  # fmt: skip
    parser.add_argument("--calibration", metavar="DIR", default=None,
                        help="int8_static: folder (or ImageFolder tree) of representative images")
    parser.add_argument("--calibration_size", type=int, default=DEFAULT_CALIBRATION_SIZE, metavar="N",
                        help=f"int8_static: calibration images used (default {DEFAULT_CALIBRATION_SIZE}, "
                             "spread over the class folders)")  # fmt: skip
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import config_from_args
    from ..data.transforms import Preprocess
    from ..errors import ConfigError
    from ..export import export_with_report

    given = vars(args)
    cfg = config_from_args(given)
    checkpoint = cfg.checkpoint or cfg.pretrained
    if not checkpoint:
        raise ConfigError("nothing to export: pass --checkpoint FILE (or --pretrained FILE)")
    arch = given.get("arch") or (cfg.arch if args.config else None)
    preprocess = None
    if args.config or "image_size" in given:  # for files that record no preprocessing
        preprocess = Preprocess(cfg.image_hw, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)
    path, report = export_with_report(
        checkpoint, arch=arch, file_format=cfg.file_format, output=args.output, opset=args.opset,
        check=not args.no_check, use_ema=cfg.use_ema, preprocess=preprocess, exporter=args.exporter,
        quantize=args.quantize, calibration=args.calibration, calibration_size=args.calibration_size,
    )  # fmt: skip
    if report and report.get("quantized"):
        real = f" (the last: {report['images']} calibration images)" if report["images"] else ""
        print(f"{args.quantize} graph checked against the float PyTorch model on inputs {report['inputs']}{real}: "
              f"top-1 agreement {report['top1_agree']}, max |logit diff| {report['max_abs_diff']:.3g} "
              f"({report['max_rel_diff']:.3g} of the logit scale); int8 is not held to the float tolerance, "
              "only gross mismatches fail")  # fmt: skip
    elif report:
        print(f"checked against PyTorch on inputs {report['inputs']}: max |diff| {report['max_abs_diff']:.3g} "
              f"({report['max_rel_diff']:.3g} of the logit scale), top-1 agreement {report['top1_agree']}")
    print(f"exported {cfg.file_format} to {path}")
    return 0
