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

A foreign ONNX graph (no metadata) is read from its input and first output: a fixed height and width
become the input size, a fixed batch size is honoured by running (zero-padded) chunks of that size,
a 1-channel input gets greyscale images (the luma of the RGB tensor, ITU-R 601 weights as Pillow's
``L``; normalised with ImageNet's mean/std in luma), float16/float64 inputs are fed in their type.
Anything else (another channel count, a rank other than 4, a non-float input, an output that is not
(batch, classes)) is refused with what the graph expects, and a failing onnxruntime run is a
``CheckpointError`` naming the model and the batch shape, never onnxruntime's traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from . import precision
from .data.transforms import Preprocess
from .errors import CheckpointError, ConfigError, ConformerError

AMP_DTYPES: dict[str, torch.dtype | None] = {
    name: None if level.dtype is None else getattr(torch, level.dtype) for name, level in precision.AMP_LEVELS.items()
}
"""Every ``amp_level`` name (the table in ``precision``) -> its autocast dtype (None = float32, no autocast)."""

__all__ = [
    "Predictor",
    "TorchPredictor",
    "OnnxPredictor",
    "open_predictor",
    "with_imagenet_names",
    "default_preprocess",
    "resolve_device",
    "amp_dtype",
    "AMP_DTYPES",
    "onnx_providers",
    "ONNX_INPUT",
    "ONNX_OUTPUTS",
    "ONNX_METADATA_KEYS",
]

log = logging.getLogger("conformer_vision.runtime")

ONNX_INPUT = "input"
ONNX_OUTPUTS = ("logits", "conv_logits", "trans_logits")
ONNX_METADATA_KEYS = ("format", "version", "arch", "model_args", "class_names", "preprocess", "outputs")
"""metadata_props of our ONNX files; every value is a JSON string (``format`` is "conformer-vision")."""

Batch = np.ndarray | torch.Tensor

LUMA = (0.299, 0.587, 0.114)
"""RGB -> grey weights (ITU-R 601-2, what Pillow's ``convert("L")`` uses); they sum to 1."""

_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def grey_preprocess(input_size: tuple[int, int] | None = None) -> Preprocess:
    """Default preprocessing of a foreign 1-channel model: ImageNet's mean/std in luma, equal on the
    three channels, so the luma of the normalised RGB tensor is exactly the normalised luma."""
    mean = float(np.dot(LUMA, IMAGENET_DEFAULT_MEAN))
    std = float(np.dot(LUMA, IMAGENET_DEFAULT_STD))
    return Preprocess(**({"input_size": input_size} if input_size else {}), mean=(mean,) * 3, std=(std,) * 3)


@runtime_checkable
class Predictor(Protocol):
    """What eval, predict, export checks and benchmarks need from a model, whatever runs it."""

    arch: str | None
    class_names: list[str] | None
    preprocess: Preprocess
    preprocess_recorded: bool  # True when ``preprocess`` comes from the model file, not from defaults
    fixed_input_size: tuple[int, int] | None  # (H, W) a graph accepts only; None = any size
    backend: str  # "torch" or "onnxruntime"
    has_heads: bool  # False for a foreign single-output ONNX graph: conv_logits is the fused output

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float32 -> (conv_logits, trans_logits), each (B, K) float32 on the CPU."""
        ...

    def fused(self, batch: Batch) -> torch.Tensor:
        """(B, 3, H, W) float32 -> fused logits (B, K) float32 on the CPU."""
        ...


def default_preprocess(
    model: nn.Module | Mapping[str, Any] | None = None, image_size: int | tuple[int, int] | None = None
) -> Preprocess:
    """The preprocessing of a model whose file records none, from timm's ``pretrained_cfg`` (the
    model's, or the mapping given, e.g. a hub config.json's): input size, interpolation, crop_pct,
    mean, std; what the cfg lacks takes ``Preprocess``'s defaults (224, bicubic, 0.875, ImageNet's
    mean/std). ``image_size`` overrides the input size. Every path that needs a model's default
    preprocessing comes here."""
    cfg = model if isinstance(model, Mapping) else getattr(model, "pretrained_cfg", None) or {}
    kwargs: dict[str, Any] = {k: cfg[k] for k in ("interpolation", "crop_pct", "mean", "std") if cfg.get(k)}
    if image_size is not None:
        kwargs["input_size"] = image_size
    elif cfg.get("input_size"):
        kwargs["input_size"] = tuple(cfg["input_size"][-2:])
    return Preprocess(**kwargs)


def amp_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of the ``amp_level`` ``name`` in any spelling (None = float32); ConfigError
    naming the valid names otherwise."""
    return AMP_DTYPES[precision.amp_level(name)]


def resolve_device(
    device: str | torch.device = "auto", index: int | None = None, option: str = "--device"
) -> torch.device:
    """The one place a device name becomes a ``torch.device``: 'cpu', 'cuda', 'cuda:N', 'gpu[:N]' or
    'auto' (cuda when available, else cpu). ``index`` places a bare 'cuda' (training: LOCAL_RANK under
    torchrun, else device_id). ConfigError, naming ``option``, for an unknown name, CUDA asked for
    where there is none, or an index beyond the visible devices."""
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    name = "cuda" + name[3:] if name.startswith("gpu") else name
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{option} {device}: unknown device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            hint = f"use {option} cpu (or auto)"
            raise ConfigError(f"{option} {device} was requested but CUDA is not available here; {hint}")
        dev = torch.device("cuda", dev.index if dev.index is not None else index or 0)
        visible = torch.cuda.device_count()
        if dev.index >= visible:
            raise ConfigError(
                f"{option} {device}: cuda:{dev.index} requested but only {visible} CUDA device(s) are visible"
            )
    return dev


class _Base:
    """Shared by both backends: ``fused`` from ``heads``."""

    arch: str | None
    class_names: list[str] | None
    preprocess: Preprocess
    preprocess_recorded: bool = False
    fixed_input_size: tuple[int, int] | None = None
    has_heads: bool = True

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fused(self, batch: Batch) -> torch.Tensor:
        conv, trans = self.heads(batch)
        return conv + trans

    def check_input_size(self, size: tuple[int, int]) -> None:
        """ConfigError when the model takes a fixed input size (a foreign ONNX graph) and ``size`` is another."""
        if self.fixed_input_size and tuple(size) != self.fixed_input_size:
            h, w = self.fixed_input_size
            raise ConfigError(
                f"{getattr(self, 'path', 'the model')} takes only {h}x{w} images (fixed in the graph), "
                f"not {size[0]}x{size[1]}; drop the image size option or give {h} {w}"
            )

    def describe(self) -> str:
        classes = f"{len(self.class_names)} classes" if self.class_names else "unnamed classes"
        return f"{self.arch or 'unknown arch'} ({self.backend}, {classes}, input {self.preprocess.input_size})"


class TorchPredictor(_Base):
    """A Conformer run eagerly under ``torch.inference_mode`` (optionally autocast), as the copy
    ``optimize_for_inference`` makes of it (BatchNorm folded, fused attention, channels_last
    weights: the model's outputs to float32 rounding, faster); the caller's model is not touched.

    Args:
        model: a ``Conformer`` (anything with ``forward_heads``).
        device: where to run; see ``resolve_device``.
        amp_dtype: None for float32, else the autocast dtype (torch.bfloat16 / torch.float16).
        channels_last: channels_last weights and inputs (oneDNN's and cuDNN's faster layout).
        optimize: False runs ``model`` itself (put in eval mode, and channels_last if asked),
            not the optimized copy: how ``benchmark`` times the model as built and the reference.
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
        channels_last: bool = True,
        optimize: bool = True,
    ) -> None:
        from .models import optimize_for_inference  # lazy: keeps the ONNX-only path free of the model code

        self.device = resolve_device(device)
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        if optimize:
            self.model = optimize_for_inference(model, channels_last=channels_last).to(self.device)
        else:
            layout = torch.channels_last if channels_last else torch.preserve_format
            self.model = model.eval().to(self.device, memory_format=layout)
        self.arch = arch or getattr(model, "variant", None) or getattr(model, "pretrained_cfg", {}).get("architecture")
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocess_recorded = preprocess is not None
        self.preprocess = _as_preprocess(preprocess) if preprocess is not None else default_preprocess(model)

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(batch, dtype=torch.float32).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None),
        ):
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
            a foreign graph is read as the module docstring says (``has_heads`` False when it lacks
            our two head outputs: per-head results absent).
        device: 'CPU' or 'GPU' (see ``onnx_providers``).
        preprocess: overrides the file's preprocessing (needed for foreign files with other settings).
        threads: intra-op threads; None = as many as torch uses (``torch.get_num_threads()``, which
            follows OMP_NUM_THREADS), so both backends share one setting.
    """

    backend = "onnxruntime"

    def __init__(
        self, path: str | Path, device: str = "CPU", *, preprocess: Preprocess | None = None, threads: int | None = None
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
        self._read_graph_input()
        self._read_graph_outputs()
        self.preprocess_recorded = preprocess is None and bool(meta.get("preprocess"))
        if preprocess is not None:
            self.preprocess = preprocess
        elif meta.get("preprocess"):
            self.preprocess = _as_preprocess(meta["preprocess"])
        else:
            grey = self.input_channels == 1
            self.preprocess = (
                grey_preprocess(self.fixed_input_size)
                if grey
                else Preprocess(**({"input_size": self.fixed_input_size} if self.fixed_input_size else {}))
            )
            log.warning(
                "%s has no preprocessing metadata: using %dx%d %s, bicubic, crop 0.875, ImageNet mean/std%s",
                self.path,
                *self.preprocess.input_size,
                "greyscale" if grey else "RGB",
                " (in luma)" if grey else "",
            )
        self.check_input_size(self.preprocess.input_size)

    @property
    def num_classes(self) -> int | None:
        """Classes of the graph's (first) output when its shape says, else of its class list."""
        return self._num_outputs or (len(self.class_names) if self.class_names else None)

    def _read_graph_input(self) -> None:
        """Input name, element type, channels, fixed batch and fixed (H, W) from the graph; refuses
        inputs that images cannot be fed to."""
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if inp.type not in _ONNX_FLOAT_TYPES:
            raise CheckpointError(
                f"{self.path} takes {inp.type} input '{inp.name}' {shape}; only float32, float16 "
                "and float64 image inputs (batch, channels, height, width) can be fed images"
            )
        if len(shape) != 4:
            raise CheckpointError(
                f"{self.path} takes input '{inp.name}' of shape {shape}; images need a 4-d input "
                "(batch, channels, height, width)"
            )
        fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if fixed[1] not in (None, 1, 3):
            raise CheckpointError(
                f"{self.path} takes {fixed[1]}-channel input '{inp.name}' {shape}; only 1-channel "
                "(greyscale) and 3-channel (RGB) models can be fed images"
            )
        self._dtype = _ONNX_FLOAT_TYPES[inp.type]
        self.input_channels = fixed[1] or 3
        self.fixed_batch = fixed[0]
        self.fixed_input_size = (fixed[2], fixed[3]) if fixed[2] and fixed[3] else None

    def _read_graph_outputs(self) -> None:
        """Which outputs to fetch (both heads of our graphs, else the first) and the class count."""
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        self.has_heads = all(name in names for name in ONNX_OUTPUTS[1:])
        self._outputs = list(ONNX_OUTPUTS[1:]) if self.has_heads else names[:1]
        first = next(o for o in outputs if o.name == self._outputs[0])
        if first.shape and len(first.shape) != 2:  # an empty shape: not recorded, checked per run
            raise CheckpointError(
                f"{self.path}: its output '{first.name}' has shape {list(first.shape)}; "
                "classification logits (batch, classes) are expected"
            )
        dims = list(first.shape or [None, None])
        self._num_outputs = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else None

    def heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        if self.input_channels == 1 and x.shape[1] == 3:
            x = np.tensordot(np.asarray(LUMA, dtype=x.dtype), x, axes=([0], [1]))[:, None]  # (B, 1, H, W)
        x = np.ascontiguousarray(x, dtype=self._dtype)
        if self.fixed_batch:
            chunks = [
                self._run(_pad_batch(x[i : i + self.fixed_batch], self.fixed_batch))
                for i in range(0, len(x), self.fixed_batch)
            ]
            out = [np.concatenate([c[k] for c in chunks])[: len(x)] for k in range(len(self._outputs))]
        else:
            out = self._run(x)
        if out[0].ndim != 2:
            raise CheckpointError(
                f"{self.path} returned '{self._outputs[0]}' of shape {list(out[0].shape)}; "
                "classification logits (batch, classes) are expected"
            )
        conv = torch.from_numpy(np.asarray(out[0], dtype=np.float32))
        trans = torch.from_numpy(np.asarray(out[1], dtype=np.float32)) if self.has_heads else torch.zeros_like(conv)
        return conv, trans

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            return self.session.run(self._outputs, {self.input_name: x})
        except Exception as e:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"onnxruntime could not run {self.path} on a batch of shape {list(x.shape)}: {reason}"
            ) from None


def _pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` (b, ...) with zero rows appended up to ``size`` (a graph with a fixed batch size)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), dtype=x.dtype)])


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
    channels_last: bool = True,
    image_size: int | tuple[int, int] | None = None,
    threads: int | None = None,
    num_classes: int | None = None,
    contradiction: str = "error",
    source: str = "command line",
) -> TorchPredictor | OnnxPredictor:
    """A predictor for any model file: ``.onnx`` -> ``OnnxPredictor``, a hub folder (a folder path,
    ``local-dir:FOLDER`` or ``hf-hub:user/repo``: ``hub.load_hub_model``) -> ``TorchPredictor`` with
    its label_names and preprocessing, ``imagenet`` -> the published ImageNet weights of ``arch``
    (``pretrained.load_published``; downloaded once), else ``checkpoint.load_model``.

    ``arch`` is needed only for foreign checkpoints that do not name their architecture. ``arch`` and
    ``num_classes`` that contradict what a model file records are handled by ``contradiction``
    ("error", "warn" or "ignore", see ``checkpoint.load_model``; ``source`` says where they came
    from). ``image_size`` overrides the input size of the file's preprocessing (other settings kept);
    for a file without preprocessing it defines the input size of the defaults; a graph with a fixed
    input size refuses another one.
    """
    from .hub import is_hub_name
    from .pretrained import is_imagenet_name

    if is_imagenet_name(path):
        predictor = _open_published(arch, device, use_ema, amp_dtype, channels_last, num_classes, contradiction, source)
        return _with_image_size(predictor, image_size)
    if is_hub_name(path) or Path(path).is_dir():
        predictor: TorchPredictor | OnnxPredictor = _open_hub(
            path, arch, device, use_ema, amp_dtype, channels_last, num_classes, contradiction, source
        )
        return _with_image_size(predictor, image_size)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        predictor = _open_onnx(path, arch, device, use_ema, amp_dtype, threads, num_classes, contradiction, source)
    else:
        from .checkpoint import load_model

        try:
            loaded = load_model(
                path, arch=arch, num_classes=num_classes, use_ema=use_ema, contradiction=contradiction, source=source
            )
        except ValueError as e:  # an unknown --arch name
            raise ConfigError(str(e)) from None
        pre = _as_preprocess(loaded.preprocess) if loaded.preprocess else None
        predictor = TorchPredictor(
            loaded.model,
            device,
            amp_dtype,
            class_names=loaded.class_names,
            preprocess=pre,
            arch=loaded.arch,
            channels_last=channels_last,
        )
        if pre is None:
            log.info("%s records no preprocessing: using %s", path, predictor.preprocess.to_dict())
    return _with_image_size(predictor, image_size)


def _open_onnx(
    path: Path,
    arch: str | None,
    device: str | torch.device,
    use_ema: bool,
    amp_dtype: torch.dtype | None,
    threads: int | None,
    num_classes: int | None,
    contradiction: str,
    source: str,
) -> OnnxPredictor:
    """``open_predictor`` for an ``.onnx`` file: no EMA or autocast (the graph holds one set of weights
    in one precision); the arch and class count it records checked against the request."""
    from .checkpoint import check_request

    if use_ema:
        raise ConfigError(
            "--use_ema applies to checkpoints; an ONNX file holds one set of weights "
            "(export with --use_ema to get the EMA weights into ONNX)"
        )
    if amp_dtype is not None:
        raise ConfigError(
            "mixed precision (--amp) applies to checkpoints run by PyTorch; an ONNX file runs "
            "in the precision it was exported in (export with --quantize for int8)"
        )
    dev = str(device).lower()
    onnx_dev = "GPU" if dev.startswith(("cuda", "gpu")) else "auto" if dev == "auto" else "CPU"
    onnx = OnnxPredictor(path, onnx_dev, threads=threads)
    if arch is not None and onnx.arch is None and contradiction == "error":
        log.warning("%s does not name its architecture: --arch %s cannot be checked against it", path, arch)
    check_request(
        path,
        {"arch": onnx.arch, "num_classes": onnx.num_classes},
        {"arch": arch, "num_classes": num_classes},
        contradiction,
        source,
    )
    return onnx


def with_imagenet_names(predictor: TorchPredictor | OnnxPredictor) -> TorchPredictor | OnnxPredictor:
    """``predictor`` with ImageNet-1k's class names (timm's tables) when its model file names no
    classes and its heads have 1000 outputs (the published weights, the authors', mmpretrain's and
    timm's files), for what ``predict`` shows and writes. Not applied by ``open_predictor``:
    evaluation maps the val folders to the model's classes by name, and ImageNet's val folders are
    named by synset (n01440764, ...) in the standard order."""
    from .pretrained import imagenet_class_names

    if predictor.class_names is None:
        onnx = isinstance(predictor, OnnxPredictor)
        count = predictor.num_classes if onnx else getattr(predictor.model, "num_classes", None)
        names = imagenet_class_names(count)
        if names is not None:
            log.info("the model's 1000 classes carry no names: showing ImageNet-1k's")
            predictor.class_names = names
    return predictor


def _open_published(
    arch: str | None,
    device: str | torch.device,
    use_ema: bool,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    num_classes: int | None,
    contradiction: str,
    source: str,
) -> TorchPredictor:
    """The published ImageNet weights of ``arch`` (``pretrained.load_published``: fetched once into
    the torch hub cache) as a ``TorchPredictor`` with their preprocessing (recorded: the variant's
    ``pretrained_cfg``)."""
    from .checkpoint import check_request
    from .pretrained import IMAGENET, load_published

    if use_ema:
        raise ConfigError("--use_ema applies to checkpoints; the published ImageNet weights are one set of weights")
    loaded = load_published(arch)
    check_request(
        IMAGENET, {"num_classes": loaded.model.num_classes}, {"num_classes": num_classes}, contradiction, source
    )
    # No class names, as for the authors' files (see with_imagenet_names): eval maps synset folders.
    return TorchPredictor(
        loaded.model, device, amp_dtype, preprocess=loaded.preprocess, arch=loaded.arch, channels_last=channels_last
    )


def _with_image_size(
    predictor: TorchPredictor | OnnxPredictor, image_size: int | tuple[int, int] | None
) -> TorchPredictor | OnnxPredictor:
    """``predictor`` with ``image_size`` as its input size (a fixed-size graph refuses another)."""
    if image_size is not None:
        import dataclasses

        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if isinstance(predictor, OnnxPredictor):
            predictor.check_input_size(hw)
        predictor.preprocess = dataclasses.replace(predictor.preprocess, input_size=hw)
    return predictor


def _open_hub(
    name: str | Path,
    arch: str | None,
    device: str | torch.device,
    use_ema: bool,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    num_classes: int | None,
    contradiction: str,
    source: str,
) -> TorchPredictor:
    """A hub folder or repository as a ``TorchPredictor`` (``open_predictor``)."""
    from .checkpoint import check_request
    from .hub import load_hub_model

    if use_ema:
        raise ConfigError(
            "--use_ema applies to checkpoints; a hub folder holds one set of weights "
            "(export with --use_ema to get the EMA weights into it)"
        )
    hub = load_hub_model(name)
    check_request(
        name,
        {"arch": hub.arch, "num_classes": hub.num_classes},
        {"arch": arch, "num_classes": num_classes},
        contradiction,
        source,
    )
    return TorchPredictor(
        hub.model.eval(),
        device,
        amp_dtype,
        class_names=hub.class_names,
        preprocess=hub.preprocess,
        arch=hub.arch,
        channels_last=channels_last,
    )
