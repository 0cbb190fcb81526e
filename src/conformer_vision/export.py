"""Export a trained model to ONNX, TorchScript, a torch.export program, safetensors or a Hugging
Face Hub folder.

Every format describes itself like a checkpoint: architecture, ``model_args``, class names and the
preprocessing (``data.transforms.Preprocess.to_dict()``) travel with the weights, as JSON strings
in ONNX ``metadata_props`` and the safetensors header, as ``conformer_vision.json`` inside
TorchScript / ``.pt2`` archives, and in config.json of a hub folder.

HF_HUB writes a folder, timm's Hub layout (``hub.py``): config.json (architecture, model_args,
label_names, pretrained_cfg with the preprocessing) and model.safetensors, so that
``timm.create_model("local-dir:DIR", pretrained=True)`` rebuilds the model, and
``timm.create_model("hf-hub:user/repo", pretrained=True)`` once the folder is pushed. The output must be
a new or empty folder, or a hub folder this project wrote (whose two files are replaced); anything
else is refused before the model is loaded.

The graph formats (ONNX, TORCHSCRIPT, EXPORTED_PROGRAM) take ``input`` (B, 3, H, W) float32 with
dynamic batch, height and width, and return ``(logits, conv_logits, trans_logits)``, each (B, K):
the fused prediction and the two heads. Inputs whose sides are not multiples of the patch size are
zero-padded inside the graph exactly as ``Conformer.pad_input`` does.

Each export checks itself before it gets its final name: ONNX with ``onnx.checker``, then every
format (a hub folder as timm rebuilds it from ``local-dir:``) against the PyTorch model on seeded
inputs (a batch of 2 at the model's input size and one non-square image whose sides are not
multiples of the patch size). Logits must agree within
``rtol`` (1e-4) of the logit scale (the largest |fused logit|) and the top-1 class must agree
wherever the reference's top-2 margin exceeds that tolerance. On a mismatch the file is kept as
``<output>.failed`` (``.failed.2``, ... when that name is taken: no existing file or folder is
replaced) and a ``ConformerError`` gives the figures.

EXPORTED_PROGRAM limitation: torch.export keeps guards that the last feature map is larger than 1x1, so
the program takes heights and widths from 2 x patch + 1 (33 for patch 16) up; a model whose input
size is below that is exported for its input size only (batch still dynamic). ONNX has no such limit.

ONNX exporter: ``exporter='dynamo'`` (``torch.onnx.export(dynamo=True)``, the default) or
``'torchscript'`` (the legacy tracer with ``dynamic_axes``; faster to run the export, deprecated by
PyTorch); ``'auto'`` tries dynamo and falls back to the tracer if dynamo fails. Both give graphs with
dynamic batch and spatial size that match PyTorch to ~1e-7 relative.

int8 ONNX (``quantize='int8_dynamic'`` or ``'int8_static'``, see ``quantize``): the float graph is
exported as above, then quantised by onnxruntime's tools (static: calibrated on ``calibration``
images preprocessed with the export's own ``Preprocess``). Its self-check cannot hold int8 to the
float tolerance: it reports top-1 agreement and the largest logit difference against the float
PyTorch model (on the seeded inputs plus up to 16 calibration images) and fails only on a gross
mismatch: non-finite output, a logit off by more than ``QUANT_MAX_REL`` of the logit scale, a top-1
flipped where the reference's top-2 margin exceeds that, or agreement below ``QUANT_MIN_AGREEMENT``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import unwrap_model
from torch import nn

from .checkpoint import FORMAT, VERSION, LoadedModel, load_model
from .data.transforms import Preprocess
from .errors import ConfigError, ConformerError
from .hub import HUB_CONFIG, HUB_WEIGHTS, check_hub_output, load_hub_model, save_hub_folder
from .models import optimize_for_inference
from .models.layers import padding_to_multiple
from .quantize import DEFAULT_CALIBRATION_SIZE, QUANTIZE_MODES, calibration_images, quantize_onnx
from .runtime import ONNX_INPUT, ONNX_OUTPUTS, OnnxPredictor, TorchPredictor, default_preprocess

__all__ = ["FILE_FORMATS", "ExportWrapper", "export_model", "check_export", "export_metadata", "default_output"]

log = logging.getLogger("conformer_vision.export")

FILE_FORMATS = {
    "ONNX": ".onnx",
    "TORCHSCRIPT": ".torchscript.pt",
    "EXPORTED_PROGRAM": ".pt2",
    "SAFETENSORS": ".safetensors",
    "HF_HUB": "",
}
"""Format -> file suffix; HF_HUB writes a folder (default name: the architecture)."""
EXTRA_FILE = "conformer_vision.json"  # metadata inside TorchScript and .pt2 archives
RTOL = 1e-4
QUANT_MAX_REL = 0.25  # int8 self-check: a logit off by more than this x logit scale is a gross mismatch
QUANT_MIN_AGREEMENT = 0.5  # ... and so is top-1 agreement below this (with >= 10 inputs)
QUANT_CHECK_IMAGES = 16  # calibration images the int8 self-check adds to the seeded inputs


class ExportWrapper(nn.Module):
    """(B, 3, H, W) -> (logits, conv_logits, trans_logits), each (B, K).

    The padding to a multiple of the patch size is unconditional (a zero pad when none is needed),
    so a traced or exported graph keeps it symbolic instead of baking in the example's branch.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.patch_size = int(model.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.pad(x, padding_to_multiple(x.shape[-2], x.shape[-1], self.patch_size))  # as Conformer.pad_input
        conv, trans = self.model.forward_heads(x)
        return conv + trans, conv, trans


def export_metadata(
    arch: str, model: nn.Module, class_names: list[str] | None, preprocess: Preprocess
) -> dict[str, Any]:
    """What an exported file says about itself (plain JSON values)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_args": model.args.to_dict(),
        "class_names": class_names,
        "preprocess": preprocess.to_dict(),
        "outputs": list(ONNX_OUTPUTS),
    }


def default_output(arch: str, file_format: str) -> Path:
    """``<arch><suffix>`` in the current directory (the specification: named after the architecture;
    the HF_HUB folder is ``<arch>``)."""
    return Path.cwd() / f"{arch}{FILE_FORMATS[file_format]}"


def export_model(
    checkpoint: str | Path | nn.Module,
    arch: str | None = None,
    file_format: str = "ONNX",
    output: str | Path | None = None,
    opset: int | None = None,
    check: bool = True,
    *,
    use_ema: bool = False,
    preprocess: Preprocess | None = None,
    exporter: str = "dynamo",
    quantize: str = "none",
    calibration: str | Path | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    class_names: list[str] | None = None,
    report: dict[str, Any] | None = None,
) -> Path:
    """Export the model in ``checkpoint`` (anything ``checkpoint.load_model`` reads; foreign files need
    ``arch``), or a Conformer in memory (exported from a copy, so the caller's model is left as it
    is), to ``file_format`` at ``output`` (default ``default_output``; a name without a suffix gets
    the format's). ``preprocess`` and ``class_names`` are used only when the source records none
    (a model in memory records neither). ONNX only:
    ``quantize`` 'int8_dynamic' or 'int8_static' (the latter calibrated on up to ``calibration_size``
    images of the folder ``calibration``). Returns the path; ``report``, when given, receives the
    self-check's figures (``check_export``; nothing when ``check`` is off)."""
    fmt = file_format.upper()
    if fmt not in FILE_FORMATS:
        raise ConfigError(f"file_format must be one of {', '.join(FILE_FORMATS)}, got {file_format!r}")
    if exporter not in ("dynamo", "torchscript", "auto"):
        raise ConfigError(f"exporter must be dynamo, torchscript or auto, got {exporter!r}")
    _check_quantize_options(fmt, quantize, calibration)
    loaded = _load_source(checkpoint, arch, use_ema)
    model = loaded.model.float().eval()
    pre = Preprocess.from_dict(loaded.preprocess) if loaded.preprocess else preprocess or default_preprocess(model)
    meta = export_metadata(loaded.arch, model, loaded.class_names or class_names, pre)
    out = Path(output) if output is not None else default_output(arch or loaded.arch, fmt)
    if not out.suffix:
        out = out.with_name(out.name + FILE_FORMATS[fmt])
    if fmt == "HF_HUB":
        check_hub_output(out)
    images = calibration_images(calibration, pre, calibration_size) if quantize == "int8_static" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _WRITERS[fmt]
    # Written under its final name inside a hidden folder next to it (archives record their file
    # name), checked there, then moved into place: a reader never sees an unchecked file.
    # Graphs are exported from the inference copy (BatchNorm folded, FCUDown pooling first: fewer
    # nodes, same outputs), with NCHW weights; weight files keep the model's own weights.
    graph = fmt in ("ONNX", "TORCHSCRIPT", "EXPORTED_PROGRAM")
    source = optimize_for_inference(model, channels_last=False) if graph else model
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder:
        tmp = Path(folder) / out.name
        if quantize == "none":
            writer(source, meta, pre, tmp, opset=opset, exporter=exporter)
        else:
            float_path = Path(folder) / f"float.{out.name}"
            writer(source, meta, pre, float_path, opset=opset, exporter=exporter)
            quantize_onnx(float_path, tmp, quantize, images)
            float_path.unlink()
        if check:
            figures = _check_or_keep(tmp, out, fmt, model, pre, quantize, images)
            if report is not None:
                report.update(figures)
        if fmt == "HF_HUB":
            _move_hub_files(tmp, out)
        else:
            os.replace(tmp, out)
    return out


def _check_or_keep(
    tmp: Path, out: Path, fmt: str, model: nn.Module, pre: Preprocess, quantize: str, images: torch.Tensor | None
) -> dict[str, Any]:
    """``check_export``'s figures for the file written at ``tmp``; when the check fails the file is
    kept beside ``out`` for inspection (``_keep_rejected``) and the error goes on."""
    try:
        figures = check_export(
            tmp,
            fmt,
            model,
            pre,
            quantized=quantize != "none",
            images=None if images is None else images[:QUANT_CHECK_IMAGES],
        )
    except BaseException:
        log.error("kept the rejected export as %s for inspection", _keep_rejected(tmp, out))
        raise
    log.info("export check passed: %s", figures)
    return figures


def _move_hub_files(tmp: Path, out: Path) -> None:
    """Move a checked hub folder's files into ``out`` (new, empty, or a hub folder written here:
    ``check_hub_output``), the weights before config.json; other files in ``out`` stay."""
    out.mkdir(exist_ok=True)
    for name in (HUB_WEIGHTS, HUB_CONFIG):
        os.replace(tmp / name, out / name)


def _keep_rejected(tmp: Path, out: Path) -> Path:
    """Move a rejected export ``tmp`` out of the temporary folder to ``<out>.failed`` or, when a
    file of that name exists (a user's, or an earlier rejected export), ``<out>.failed.2``, ``.3``...:
    never over an existing file (a hard link claims the name atomically; where links are not
    supported, and for a hub folder, the name is checked and then renamed to)."""
    for n in range(1, 1000):
        failed = out.with_name(f"{out.name}.failed" + (f".{n}" if n > 1 else ""))
        try:
            os.link(tmp, failed)
        except FileExistsError:
            continue
        except OSError:  # no hard links on this filesystem
            if failed.exists():
                continue
            os.replace(tmp, failed)
            return failed
        tmp.unlink()
        return failed
    raise ConformerError(f"could not keep the rejected export: {out}.failed .. .failed.999 all exist")


def _load_source(source: str | Path | nn.Module, arch: str | None, use_ema: bool) -> LoadedModel:
    """The model to export: rebuilt from a file, or a copy of a Conformer in memory (unwrapped from
    DDP / torch.compile)."""
    if isinstance(source, nn.Module):
        model = unwrap_model(source)
        if not hasattr(model, "args") or not hasattr(model, "forward_heads"):
            raise ConfigError(f"export_model takes a Conformer or a checkpoint path, got a {type(model).__name__}")
        name = arch or getattr(model, "variant", None) or "conformer"
        return LoadedModel(model=copy.deepcopy(model), arch=name, class_names=None, preprocess=None)
    try:
        return load_model(source, arch=arch, use_ema=use_ema)
    except ValueError as e:  # unknown arch name
        raise ConfigError(str(e)) from None


def _check_quantize_options(fmt: str, quantize: str, calibration: str | Path | None) -> None:
    """Usage errors of the int8 options, before anything is loaded (the calibration folder itself is
    read by ``calibration_images``, before anything is written)."""
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if quantize != "none" and fmt != "ONNX":
        raise ConfigError(
            f"--quantize {quantize} applies to ONNX exports only, not --file_format {fmt}; "
            "use --file_format ONNX or drop --quantize"
        )
    if quantize == "int8_static" and calibration is None:
        raise ConfigError(
            "--quantize int8_static needs calibration images: pass --calibration DIR (a folder or "
            "ImageFolder tree of images like the ones the model will see), or use --quantize "
            "int8_dynamic, which needs none"
        )
    if calibration is not None and quantize != "int8_static":
        raise ConfigError(f"--calibration is used only with --quantize int8_static (got --quantize {quantize})")


TRACE_SHAPE = (2, 3, 224, 192)
"""Example input the graph formats are traced with, whatever the model's input size: batch > 1 and
every feature map > 1x1 so no size is specialised to 0/1, and non-square so height and width stay
separate symbols."""


def _trace_example() -> torch.Tensor:
    return torch.randn(*TRACE_SHAPE, generator=torch.Generator().manual_seed(0))


def _write_onnx(
    model: nn.Module, meta: dict[str, Any], pre: Preprocess, path: Path, opset: int | None, exporter: str
) -> None:
    import onnx

    wrapper = ExportWrapper(model).eval()
    if exporter in ("dynamo", "auto"):
        try:
            _onnx_dynamo(wrapper, path, opset)
        except Exception as e:
            if exporter == "dynamo":
                raise ConformerError(
                    f"ONNX export (torch.export-based exporter) failed: {str(e)[:500]} Try --exporter torchscript."
                ) from e
            log.warning("dynamo ONNX exporter failed (%s); falling back to the TorchScript exporter", str(e)[:200])
            exporter = "torchscript"
    if exporter == "torchscript":
        _onnx_torchscript(wrapper, path, opset)
    proto = onnx.load(str(path))
    _name_dynamic_dims(proto)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    proto.doc_string = f"Conformer {meta['arch']} exported by conformer-vision; outputs {list(ONNX_OUTPUTS)}"
    onnx.save(proto, str(path))


def _onnx_dynamo(wrapper: nn.Module, path: Path, opset: int | None) -> None:
    dyn = torch.export.Dim.DYNAMIC
    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (_trace_example(),),
            dynamo=True,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_shapes={"x": {0: dyn, 2: dyn, 3: dyn}},
            opset_version=opset,
            verbose=False,
        )
    program.save(str(path))


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for the block (the ONNX optimiser logs every rewrite at INFO)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _onnx_torchscript(wrapper: nn.Module, path: Path, opset: int | None) -> None:
    axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, **{name: {0: "batch"} for name in ONNX_OUTPUTS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings (the pad is unconditional)
        torch.onnx.export(
            wrapper,
            (_trace_example(),),
            str(path),
            dynamo=False,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes=axes,
            opset_version=opset or 18,
        )


def _name_dynamic_dims(proto: Any) -> None:
    """Give the symbolic dims readable names: batch, height, width (the exporter's are s0, s77...)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    rename = {dims[i].dim_param: name for i, name in ((0, "batch"), (2, "height"), (3, "width")) if dims[i].dim_param}
    for info in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def _write_torchscript(model: nn.Module, meta: dict[str, Any], pre: Preprocess, path: Path, **_: Any) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the shape arithmetic is traced, not frozen
        traced = torch.jit.trace(ExportWrapper(model).eval(), (_trace_example(),), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})


def _program_min_side(model: nn.Module) -> int:
    """Smallest height/width a dynamic torch.export program accepts: the tracer's guards keep the
    last feature map larger than 1x1 (they come from stride computations in the convolution meta
    kernels; the ONNX graph does not keep them and runs any size)."""
    return 2 * int(model.patch_size) + 1


def _write_exported_program(model: nn.Module, meta: dict[str, Any], pre: Preprocess, path: Path, **_: Any) -> None:
    dyn = torch.export.Dim.DYNAMIC
    lo = _program_min_side(model)
    if min(pre.input_size) >= lo:
        side = dyn(min=lo, max=8192)
        example, shapes = _trace_example(), {"x": {0: dyn, 2: side, 3: side}}
    else:  # a model for tiny images: only the batch is dynamic
        log.warning(
            "input size %s is below %d: the exported program takes only that size (batch dynamic)", pre.input_size, lo
        )
        example, shapes = torch.randn(2, 3, *pre.input_size), {"x": {0: dyn}}
    with warnings.catch_warnings(), _quiet("torch.export"):
        warnings.simplefilter("ignore")
        program = torch.export.export(ExportWrapper(model).eval(), (example,), dynamic_shapes=shapes, strict=False)
    torch.export.save(program, str(path), extra_files={EXTRA_FILE: json.dumps(meta)})


def _write_hub(model: nn.Module, meta: dict[str, Any], pre: Preprocess, path: Path, **_: Any) -> None:
    save_hub_folder(model, path, meta, pre)


def _write_safetensors(model: nn.Module, meta: dict[str, Any], pre: Preprocess, path: Path, **_: Any) -> None:
    from safetensors.torch import save_file

    header = {k: json.dumps(v) for k, v in meta.items() if k != "outputs"}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=header)


_WRITERS = {
    "ONNX": _write_onnx,
    "TORCHSCRIPT": _write_torchscript,
    "EXPORTED_PROGRAM": _write_exported_program,
    "SAFETENSORS": _write_safetensors,
    "HF_HUB": _write_hub,
}
"""One writer per ``FILE_FORMATS`` key: ``writer(model, meta, preprocess, path, opset=, exporter=)``."""


def _check_inputs(pre: Preprocess, patch: int, fmt: str) -> list[torch.Tensor]:
    """A batch of 2 at the input size and one non-square image with sides not multiples of the patch
    (unless the format was exported for the input size alone)."""
    h, w = pre.input_size
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 3, h, w, generator=g)]
    if fmt != "EXPORTED_PROGRAM" or min(h, w) >= 2 * patch + 1:
        odd = (h + patch // 2 + 1, max(w - patch // 2 - 1, 2 * patch + 3))  # e.g. 224 -> (233, 215)
        inputs.append(torch.randn(1, 3, *odd, generator=g))
    return inputs


def check_export(
    path: str | Path,
    file_format: str,
    model: nn.Module,
    preprocess: Preprocess,
    rtol: float = RTOL,
    *,
    quantized: bool = False,
    images: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Compare an exported file with ``model`` (eval mode, fp32) on seeded inputs.

    Returns {'max_abs_diff', 'max_rel_diff', 'top1_agree', 'inputs'}; raises ConformerError on a
    mismatch (module docstring). ONNX files also pass ``onnx.checker.check_model`` first. With
    ``quantized`` (an int8 ONNX file) only gross mismatches fail, and ``images`` (N, 3, H, W), real
    preprocessed images, are checked too (the report's 'images' is their count).
    """
    path, fmt = Path(path), file_format.upper()
    reference = TorchPredictor(model, "cpu", preprocess=preprocess)
    run = _runner(path, fmt)
    inputs = _check_inputs(preprocess, int(model.patch_size), fmt)
    if quantized and images is not None and len(images):
        inputs.append(images)
    worst_abs, worst_rel, agree, total = 0.0, 0.0, 0, 0
    for x in inputs:
        c = _compare_outputs(x, reference, run)
        worst_abs, worst_rel = max(worst_abs, c["diff"]), max(worst_rel, c["diff"] / c["scale"])
        agree, total = agree + int(c["same"].sum()), total + len(c["same"])
        fail = _quantized_failure(c) if quantized else _float_failure(c, rtol)
        if fail:
            raise ConformerError(
                f"{fmt}{' int8' if quantized else ''} export of {path.name} does not match PyTorch on input "
                f"{list(x.shape)}: {fail}; max |diff| {c['diff']:.3g} (logit scale {c['scale']:.3g}), top-1 "
                f"agreement {int(c['same'].sum())}/{len(c['same'])}"
            )
    if quantized and total >= 10 and agree < QUANT_MIN_AGREEMENT * total:
        raise ConformerError(
            f"{fmt} int8 export of {path.name}: top-1 agreement with the float model only "
            f"{agree}/{total} (< {QUANT_MIN_AGREEMENT:.0%}); the quantisation failed"
        )
    report = {
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "top1_agree": f"{agree}/{total}",
        "inputs": [list(x.shape) for x in inputs],
    }
    if quantized:
        report.update(quantized=True, images=0 if images is None else len(images))
    return report


def _compare_outputs(x: torch.Tensor, reference: TorchPredictor, run: Any) -> dict[str, Any]:
    """Figures of one input: 'diff' (largest |logit diff| over the three outputs), 'scale' (largest
    |fused logit| of the reference), 'margin' (reference top-2 margin, (B,)), 'same' (top-1 equal,
    (B,) bool), 'finite' (every output finite)."""
    ref_conv, ref_trans = reference.heads(x)
    ref = ref_conv + ref_trans  # (B, K)
    outs = run(x)  # (fused, conv, trans)
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1] if ref.shape[1] > 1 else torch.full((ref.shape[0],), float("inf"))
    return {
        "diff": max(float((o - r).abs().max()) for o, r in zip(outs, (ref, ref_conv, ref_trans))),
        "scale": max(float(ref.abs().max()), 1e-6),
        "margin": margin,
        "same": outs[0].argmax(1) == ref.argmax(1),
        "finite": all(bool(torch.isfinite(o).all()) for o in outs),
    }


def _float_failure(c: dict[str, Any], rtol: float) -> str | None:
    """Float exports: logits within ``rtol`` x scale, top-1 equal wherever the margin exceeds 2 x that."""
    if not c["finite"] or c["diff"] > rtol * c["scale"]:
        return f"logits differ by more than {rtol:g} x the logit scale"
    if bool(((c["margin"] > 2 * rtol * c["scale"]) & ~c["same"]).any()):
        return "top-1 differs on a clearly decided input"
    return None


def _quantized_failure(c: dict[str, Any]) -> str | None:
    """int8 exports: only gross mismatches (module docstring)."""
    if not c["finite"]:
        return "non-finite output"
    if c["diff"] > QUANT_MAX_REL * c["scale"]:
        return f"int8 logits differ by more than {QUANT_MAX_REL:g} x the logit scale"
    if bool(((c["margin"] > QUANT_MAX_REL * c["scale"]) & ~c["same"]).any()):
        return f"top-1 flipped where the float model's top-2 margin exceeds {QUANT_MAX_REL:g} x the logit scale"
    return None


def _runner(path: Path, fmt: str) -> Any:
    """A function (B, 3, H, W) -> (fused, conv, trans) CPU tensors for the exported file."""
    if fmt == "ONNX":
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as e:
            raise ConformerError(f"onnx.checker rejected {path.name}: {str(e)[:500]}") from None
        predictor = OnnxPredictor(path, "CPU")

        def run_onnx(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            conv, trans = predictor.heads(x)
            return conv + trans, conv, trans

        return run_onnx
    if fmt == "SAFETENSORS":
        module: Any = ExportWrapper(load_model(path).model)
    elif fmt == "HF_HUB":  # rebuilt the way timm's create_model("local-dir:...") does it
        module = ExportWrapper(load_hub_model(f"local-dir:{path}").model.eval())
    elif fmt == "TORCHSCRIPT":
        module = torch.jit.load(str(path), map_location="cpu")
    else:
        module = torch.export.load(str(path)).module()
    return lambda x: _torch_run(module, x)


def _torch_run(fn: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return tuple(t.float() for t in fn(x))
