"""One predictor over a PyTorch module or an onnxruntime session.

Evaluation, prediction, the export self-check and benchmarks all run a model through a
``Predictor``, so each backend has exactly one inference code path:

    predictor.heads(batch)  # (B, 3, H, W) float32 -> (conv_logits, trans_logits), each (B, K) on CPU
    predictor.fused(batch)  # (B, K): conv_logits + trans_logits, the Conformer prediction

and carries what a model file says about itself: ``class_names`` (index -> name, or None),
``preprocess`` (the ``data.transforms.Preprocess`` every path uses to turn an image into a tensor)
and ``arch``. ``open_predictor`` picks the backend from the file: ``.onnx`` -> onnxruntime, anything
else -> ``checkpoint.load_model`` (this project's checkpoints, the authors', mmpretrain's,
safetensors).

Exported ONNX graphs (``export.py``) take ``input`` (B, 3, H, W) with dynamic batch and spatial size
and return ``logits``, ``conv_logits`` and ``trans_logits`` (B, K); their ``metadata_props`` hold JSON
strings (``ONNX_METADATA_KEYS``) so an ONNX file describes itself like a checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .data.transforms import Preprocess
from .errors import CheckpointError, ConfigError, ConformerError

AMP_LEVELS = {"O0": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast choices of inference and benchmarks: name -> ``amp_dtype`` (None = float32)."""

__all__ = [
    "Predictor", "TorchPredictor", "OnnxPredictor", "open_predictor", "default_preprocess", "resolve_device",
    "onnx_providers", "ONNX_INPUT", "ONNX_OUTPUTS", "ONNX_METADATA_KEYS",
]  # fmt: skip

log = logging.getLogger("conformer_vision.runtime")

ONNX_INPUT = "input"
ONNX_OUTPUTS = ("logits", "conv_logits", "trans_logits")
ONNX_METADATA_KEYS = ("format", "version", "arch", "model_args", "class_names", "preprocess", "outputs")
"""metadata_props of our ONNX files; every value is a JSON string (``format`` is "conformer-vision")."""

Batch = np.ndarray | torch.Tensor


@runtime_checkable
class Predictor(Protocol):
    """What eval, predict, export checks and benchmarks need from a model, whatever runs it."""

    arch: str | None
    class_names: list[str] | None
    preprocess: Preprocess
    backend: str  # "torch" or "onnxruntime"
    has_heads: bool  # False for a foreign single-output ONNX graph: conv_logits is the fused output

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float32 -> (conv_logits, trans_logits), each (B, K) float32 on the CPU."""
        ...

    def fused(self, batch: Batch) -> torch.Tensor:
        """(B, 3, H, W) float32 -> fused logits (B, K) float32 on the CPU."""
        ...


def default_preprocess(model: nn.Module | None = None, image_size: int | tuple[int, int] | None = None) -> Preprocess:
    """The preprocessing of a model whose file does not record one: the variant's timm-style
    ``pretrained_cfg`` (224, bicubic, crop 0.875, ImageNet mean/std), ``image_size`` overriding."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    kwargs: dict[str, Any] = {k: cfg[k] for k in ("interpolation", "crop_pct", "mean", "std") if k in cfg}
    if image_size is not None:
        kwargs["input_size"] = image_size
    elif "input_size" in cfg:
        kwargs["input_size"] = tuple(cfg["input_size"][-2:])
    return Preprocess(**kwargs)


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'gpu' or 'auto' -> a torch.device; ConfigError when CUDA is asked
    for but not available."""
    name = str(device).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    name = "cuda" + name[3:] if name.startswith("gpu") else name
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available here; use --device cpu")
    return dev


class _Base:
    """Shared by both backends: ``fused`` from ``heads``."""

    arch: str | None
    class_names: list[str] | None
    preprocess: Preprocess
    has_heads: bool = True

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fused(self, batch: Batch) -> torch.Tensor:
        conv, trans = self.heads(batch)
        return conv + trans

    def describe(self) -> str:
        classes = f"{len(self.class_names)} classes" if self.class_names else "unnamed classes"
        return f"{self.arch or 'unknown arch'} ({self.backend}, {classes}, input {self.preprocess.input_size})"


class TorchPredictor(_Base):
    """A Conformer module run eagerly under ``torch.inference_mode`` (optionally autocast).

    Args:
        model: a ``Conformer`` (anything with ``forward_heads``); put in eval mode and moved to ``device``.
        device: where to run; see ``resolve_device``.
        amp_dtype: None for float32, else the autocast dtype (torch.bfloat16 / torch.float16).
        channels_last: use the channels_last memory format for the model and inputs.
    """

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        amp_dtype: torch.dtype | None = None,
        *,
        class_names: list[str] | None = None,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
        arch: str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.eval().to(self.device, memory_format=memory_format)
        self.arch = arch or getattr(model, "variant", None)
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocess = _as_preprocess(preprocess) if preprocess is not None else default_preprocess(model)

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(batch, dtype=torch.float32).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):  # fmt: skip
            conv, trans = self.model.forward_heads(x)  # (B, K) each
        return conv.float().cpu(), trans.float().cpu()


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for 'CPU' or 'GPU' (also 'cpu', 'cuda', 'auto').

    Raises ConformerError when the GPU is asked for and this onnxruntime has no CUDA provider.
    """
    import onnxruntime as ort

    name = device.lower()
    available = ort.get_available_providers()
    if name == "auto":
        name = "gpu" if "CUDAExecutionProvider" in available else "cpu"
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name.split(":")[0] in ("gpu", "cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ConformerError(
                "ONNX on the GPU needs onnxruntime's CUDAExecutionProvider, which this onnxruntime "
                f"{ort.__version__} does not have (available: {', '.join(available)}). Install the "
                "'onnxruntime-gpu' package matching your CUDA version, or run on the CPU (-m CPU)."
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"unknown ONNX device {device!r}: use CPU or GPU")


class OnnxPredictor(_Base):
    """An exported ONNX graph run by onnxruntime.

    Args:
        path: the ``.onnx`` file. Ours carry class names and preprocessing in ``metadata_props``;
            a foreign graph with one output is accepted (``has_heads`` False, per-head results absent).
        device: 'CPU' or 'GPU' (see ``onnx_providers``).
        preprocess: overrides the file's preprocessing (needed for foreign files with other settings).
        threads: intra-op threads; None = as many as torch uses (``torch.get_num_threads()``, which
            follows OMP_NUM_THREADS), so both backends share one setting.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        *,
        preprocess: Preprocess | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        providers = onnx_providers(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for broken files
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise CheckpointError(f"{self.path} is not a loadable ONNX model ({reason})") from None
        if providers[0] not in self.session.get_providers():
            raise ConformerError(
                f"onnxruntime could not start {providers[0]} (CUDA/cuDNN libraries missing or not matching?); "
                "run on the CPU (-m CPU) or fix the CUDA installation"
            )
        meta = read_onnx_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = meta
        self.arch = meta.get("arch")
        self.class_names = meta.get("class_names")
        if preprocess is not None:
            self.preprocess = preprocess
        elif meta.get("preprocess"):
            self.preprocess = _as_preprocess(meta["preprocess"])
        else:
            log.warning("%s has no preprocessing metadata: using 224x224 bicubic, crop 0.875, ImageNet mean/std",
                        self.path)  # fmt: skip
            self.preprocess = Preprocess()
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_heads = all(name in outputs for name in ONNX_OUTPUTS[1:])
        self._outputs = list(ONNX_OUTPUTS[1:]) if self.has_heads else outputs[:1]

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        out = self.session.run(self._outputs, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        conv = torch.from_numpy(out[0])
        trans = torch.from_numpy(out[1]) if self.has_heads else torch.zeros_like(conv)
        return conv, trans


def read_onnx_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Our ONNX ``metadata_props`` (JSON strings) decoded; {} for a file without them."""
    from .checkpoint import FORMAT  # lazy: keeps the ONNX-only path free of the model code

    if props.get("format") != json.dumps(FORMAT):
        return {}
    out: dict[str, Any] = {}
    for key in ONNX_METADATA_KEYS:
        if key in props:
            try:
                out[key] = json.loads(props[key])
            except json.JSONDecodeError:
                raise CheckpointError(f"ONNX metadata '{key}' is not valid JSON: {props[key][:100]!r}") from None
    return out


def _as_preprocess(value: Preprocess | Mapping[str, Any]) -> Preprocess:
    return value if isinstance(value, Preprocess) else Preprocess.from_dict(value)


def open_predictor(
    path: str | Path,
    arch: str | None = None,
    device: str | torch.device = "cpu",
    use_ema: bool = False,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    image_size: int | tuple[int, int] | None = None,
    threads: int | None = None,
) -> TorchPredictor | OnnxPredictor:
    """A predictor for any model file: ``.onnx`` -> ``OnnxPredictor``, else ``checkpoint.load_model``.

    ``arch`` is needed only for foreign checkpoints that do not name their architecture.
    ``image_size`` overrides the input size of the file's preprocessing (other settings kept); for a
    file without preprocessing it defines the input size of the defaults.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        if use_ema:
            raise ConfigError("--use_ema applies to checkpoints; an ONNX file holds one set of weights "
                              "(export with --use_ema to get the EMA weights into ONNX)")  # fmt: skip
        if amp_dtype is not None:
            raise ConfigError("mixed precision (--amp) applies to checkpoints run by PyTorch; an ONNX file runs "
                              "in the precision it was exported in (export with --quantize for int8)")  # fmt: skip
        dev = str(device).lower()
        onnx_dev = "GPU" if dev.startswith(("cuda", "gpu")) else "auto" if dev == "auto" else "CPU"
        predictor: TorchPredictor | OnnxPredictor = OnnxPredictor(path, onnx_dev, threads=threads)
    else:
        from .checkpoint import load_model

        try:
            loaded = load_model(path, arch=arch, use_ema=use_ema)
        except ValueError as e:  # an unknown --arch name
            raise ConfigError(str(e)) from None
        pre = _as_preprocess(loaded.preprocess) if loaded.preprocess else None
        if pre is None:
            pre = default_preprocess(loaded.model)
            log.info("%s records no preprocessing: using %s", path, pre.to_dict())
        predictor = TorchPredictor(
            loaded.model, device, amp_dtype, class_names=loaded.class_names, preprocess=pre,
            arch=loaded.arch, channels_last=channels_last,
        )  # fmt: skip
    if image_size is not None:
        import dataclasses

        predictor.preprocess = dataclasses.replace(predictor.preprocess, input_size=image_size)
    return predictor
