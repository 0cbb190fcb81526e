"""int8 quantisation of an exported ONNX graph, with onnxruntime's own tools (``onnxruntime.quantization``).

Shared by ``conformer export --quantize`` and ``conformer benchmark --onnx int8 / int8_static``.

* ``int8_dynamic``: ``quantize_dynamic`` of the MatMul/Gemm weights (int8); activations are quantised
  per batch at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``, fused by onnxruntime).
  Convolutions stay float32. No calibration data. The faster of the two on this project's CPU.
* ``int8_static``: ``quantize_static`` in QDQ format with weights int8 per output channel and
  activations uint8 (the U8S8 pair onnxruntime's x86 kernels use) at fixed ranges calibrated on real
  images (MinMax). Only the MatMuls with a weight operand are quantised (the transformer's and the
  FCUs' linear layers), and their outputs stay float (onnxruntime fuses DequantizeLinear + MatMul
  into ``MatMulIntegerToFloat``); attention's activation x activation MatMuls, the classifier heads
  (Gemm), the convolutions, LayerNorm, Softmax and GELU stay float.

What was tried (conformer_tiny_patch16 briefly trained on Fashion-MNIST, 64 calibration images,
200 held-out images, one thread, fp32 ONNX ~11 img/s, dynamic ~21): every MatMul quantised,
outputs requantised (QDQ's default: QK^T, attention x V and a ``QLinearSoftmax`` all in uint8)
ran at ~16 img/s; keeping attention and the MatMul outputs float gave ~20 img/s and the smallest
logit error of all variants. Quantising the convolutions too (QDQ or QLinearConv) lowered top-1
agreement with fp32 from 98.5-100% to 92.5-95.5% and was not faster; quantising the two heads'
Gemm inputs raised the largest logit error 15x; per-tensor instead of per-channel weights changed
nothing measurable; QOperator format instead of QDQ was within noise. Percentile calibration gave
the same agreement as MinMax at 3x the time and ~7 GB of memory (onnxruntime keeps every
calibration activation for its histograms). ``quant_pre_process`` cannot run its symbolic shape
inference on the dynamic height/width graph and changed nothing without it.

Both quantisers keep ``metadata_props``; ``quantize_onnx`` copies them from the source anyway and
adds ``quantization`` (the mode, a JSON string), so every reader of our ONNX files works unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.images import list_images, load_rgb
from .data.transforms import Preprocess, preprocess_image
from .errors import ConfigError, ConformerError, DataError, ImageDecodeError

__all__ = [
    "QUANTIZE_MODES",
    "DEFAULT_CALIBRATION_SIZE",
    "quantize_onnx",
    "calibration_files",
    "calibration_images",
    "integer_ops",
]

log = logging.getLogger("conformer_vision.quantize")

QUANTIZE_MODES = ("none", "int8_dynamic", "int8_static")
DEFAULT_CALIBRATION_SIZE = 64
DYNAMIC_OP_TYPES = ["MatMul", "Gemm"]
CALIBRATION_BATCH = 8


def quantize_onnx(
    source: str | Path, output: str | Path, mode: str, calibration: torch.Tensor | np.ndarray | None = None
) -> Path:
    """Write the int8 version of the float ONNX graph ``source`` to ``output``.

    Args:
        source: a float32 ONNX file (ours: input ``input`` (B, 3, H, W)).
        output: where the quantised graph goes.
        mode: 'int8_dynamic' or 'int8_static' (module docstring).
        calibration: for 'int8_static', preprocessed images (N, 3, H, W) float32 whose activation
            ranges fix the quantisation (``calibration_images``); ignored by 'int8_dynamic'.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    source, output = Path(source), Path(output)
    if mode not in QUANTIZE_MODES[1:]:
        raise ConfigError(f"quantize mode must be one of {', '.join(QUANTIZE_MODES[1:])}, got {mode!r}")
    with _quiet():
        if mode == "int8_dynamic":
            quantize_dynamic(
                str(source), str(output), op_types_to_quantize=DYNAMIC_OP_TYPES, weight_type=QuantType.QInt8
            )
        else:
            if calibration is None or len(calibration) == 0:
                raise ConfigError("int8_static quantisation needs calibration images")
            model = onnx.load(str(source))
            weight_matmuls = _weight_matmuls(model)
            quantize_static(
                model,
                str(output),
                _CalibrationReader(calibration, model.graph.input[0].name),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=weight_matmuls,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
            )
    _copy_metadata(source, output, mode)
    return output


class _CalibrationReader:
    """onnxruntime's ``CalibrationDataReader`` protocol (duck-typed: ``get_next`` / ``rewind``) over a
    tensor of images, in batches of ``CALIBRATION_BATCH``."""

    def __init__(self, images: torch.Tensor | np.ndarray, input_name: str) -> None:
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.batches = [array[i : i + CALIBRATION_BATCH] for i in range(0, len(array), CALIBRATION_BATCH)]
        self.input_name = input_name
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def _weight_matmuls(model: Any) -> list[str]:
    """Names of the MatMul nodes whose second operand is a weight (an initializer), naming unnamed
    nodes in ``model`` (an onnx.ModelProto, changed in place) so the quantiser can select them."""
    weights = {t.name for t in model.graph.initializer}
    names = set()
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
        if node.op_type == "MatMul" and node.input[1] in weights:
            names.add(node.name)
    if not names:
        raise ConformerError("int8_static found no MatMul with a weight operand to quantise in the graph")
    return sorted(names)


def _copy_metadata(source: Path, output: Path, mode: str) -> None:
    """Give ``output`` the metadata_props and doc string of ``source``, plus ``quantization``."""
    import onnx

    src = onnx.load(str(source), load_external_data=False)
    out = onnx.load(str(output))
    props = {p.key: p.value for p in out.metadata_props}
    props.update({p.key: p.value for p in src.metadata_props})
    props["quantization"] = json.dumps(mode)
    del out.metadata_props[:]
    for key, value in props.items():
        out.metadata_props.add(key=key, value=value)
    out.doc_string = f"{src.doc_string} ({mode} quantised by onnxruntime.quantization)".strip()
    onnx.save(out, str(output))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantisers log every tensor they skip and warn about pre-processing: keep output readable."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def integer_ops(path: str | Path) -> dict[str, int]:
    """How many nodes of each quantisation-related op type (QuantizeLinear, MatMulInteger, ...) a graph has."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if "uantize" in node.op_type or "Integer" in node.op_type or node.op_type.startswith("QLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def calibration_files(folder: str | Path, size: int = DEFAULT_CALIBRATION_SIZE) -> list[Path]:
    """Up to ``size`` image files from ``folder`` (flat, or an ImageFolder tree: then taken round-robin
    over the class folders, so every class is represented). Raises DataError if there are none."""
    folder = Path(folder)
    if size < 1:
        raise ConfigError(f"--calibration_size must be >= 1, got {size}")
    if not folder.is_dir():
        raise DataError(
            f"calibration folder {folder} does not exist or is not a folder; "
            "pass --calibration DIR with a few dozen images like the ones the model will see"
        )
    try:
        files = list_images(folder, recursive=True)
    except OSError as e:
        raise DataError(f"cannot list calibration folder {folder}: {e.strerror or e}") from None
    if not files:
        raise DataError(
            f"calibration folder {folder} holds no images (.jpg, .png, ...); "
            "put a few dozen representative images in it (sub-folders are searched)"
        )
    groups: dict[Path, list[Path]] = {}
    for f in sorted(files):
        groups.setdefault(f.parent, []).append(f)
    ordered = [g[i] for i in range(max(map(len, groups.values()))) for g in groups.values() if i < len(g)]
    return ordered[:size]


def calibration_images(
    folder: str | Path, preprocess: Preprocess, size: int = DEFAULT_CALIBRATION_SIZE
) -> torch.Tensor:
    """``calibration_files`` decoded (``load_rgb``) and preprocessed (``preprocess.eval_transform``):
    (N, 3, H, W) float32. Unreadable files are skipped with a warning; none readable is a DataError."""
    images, bad = [], []
    for f in calibration_files(folder, size):
        try:
            images.append(preprocess_image(load_rgb(f), preprocess))
        except ImageDecodeError as e:
            bad.append(e)
    for e in bad[:5]:
        log.warning("calibration: skipped %s", e)
    if not images:
        raise DataError(
            f"none of the {len(bad)} calibration images in {folder} could be read "
            f"(first: {bad[0].reason}); pass a folder of readable images"
        )
    return torch.stack(images)
