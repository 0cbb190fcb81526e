"""The served model: one ``runtime.Predictor`` plus what the HTTP layer needs around it.

``open_served_model`` reads the same files as ``conformer predict`` (this project's checkpoints, foreign
weights with ``arch``, ONNX exports) and, in addition, a hub-layout folder (timm's ``config.json`` +
``model.safetensors``). Images are turned into tensors exactly as ``predict`` does it
(``data.images.load_rgb`` + the model's ``Preprocess.eval_transform``), and probabilities are the
softmax, in float64, of the fused logits ``conv_logits + trans_logits``: the numbers ``predict --topk``
writes.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import load_rgb
from ..errors import CheckpointError, ConfigError
from ..runtime import Predictor, TorchPredictor, amp_dtype, default_preprocess, open_predictor, with_imagenet_names

__all__ = ["ImageResult", "ServedModel", "open_served_model"]

log = logging.getLogger("conformer_vision.serve")

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"


@dataclass
class ImageResult:
    """One image's probabilities (float64 softmax over the classes), fused and per head."""

    probs: torch.Tensor  # (K,) fused
    conv_probs: torch.Tensor | None  # (K,) CNN head; None when the model has no separate heads
    trans_probs: torch.Tensor | None  # (K,) transformer head


class ServedModel:
    """A predictor with class names, the decode + preprocessing of one image, batched inference
    and (for PyTorch models) Grad-CAM overlays.

    ``run_batch`` and ``explain`` must be called from one thread only (the batcher's model thread):
    Grad-CAM hooks into the very modules batched inference runs.
    """

    def __init__(self, predictor: Predictor, source: Path, kind: str) -> None:
        self.predictor = predictor
        self.source = source
        self.kind = kind  # "checkpoint", "onnx" or "hub folder"
        with_imagenet_names(predictor)  # 1000 unnamed classes: ImageNet-1k's
        count = _num_classes(predictor)
        names = predictor.class_names
        self.class_names = list(names) if names else [str(i) for i in range(count)]
        self.transform = predictor.preprocess.eval_transform()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def can_explain(self) -> bool:
        """Grad-CAM needs the PyTorch module (checkpoints and hub folders, not ONNX graphs)."""
        return isinstance(self.predictor, TorchPredictor)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` and the page show."""
        pre = self.predictor.preprocess
        return {
            "source": self.source.name,
            "kind": self.kind,
            "arch": self.predictor.arch,
            "backend": self.predictor.backend,
            "classes": self.class_names,
            "input_size": list(pre.input_size),
            "preprocess": pre.to_dict(),
            "has_heads": self.predictor.has_heads,
            "can_explain": self.can_explain,
            "precision": _precision_name(self.predictor),
        }

    def decode(self, data: bytes, scratch: Path) -> torch.Tensor:
        """Uploaded bytes -> the model input (3, H, W), through ``load_rgb`` like every other path.

        ``load_rgb`` reads files, so the bytes go to a private file in ``scratch`` first (removed at
        once). Raises ImageDecodeError with the reason. Not thread-safe (``load_rgb`` is not): call
        from one decoding thread.
        """
        fd, name = tempfile.mkstemp(dir=scratch, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.transform(load_rgb(name))
        finally:
            os.unlink(name)

    def run_batch(self, images: torch.Tensor) -> list[ImageResult]:
        """(B, 3, H, W) -> one ``ImageResult`` per image; fused = conv + trans, as ``Predictor.fused``."""
        conv, trans = self.predictor.heads(images)
        probs = (conv + trans).double().softmax(dim=1)
        if not self.predictor.has_heads:
            return [ImageResult(p, None, None) for p in probs]
        conv_p, trans_p = conv.double().softmax(dim=1), trans.double().softmax(dim=1)
        return [ImageResult(p, c, t) for p, c, t in zip(probs, conv_p, trans_p)]

    def top_k(self, result: ImageResult, k: int, heads: bool = False) -> list[dict[str, Any]]:
        """``[{"class", "name", "prob"}, ...]`` best first (``predict --topk``'s fields); with ``heads``
        each entry also has ``cnn_prob`` and ``transformer_prob`` of the same class."""
        top = result.probs.topk(min(k, self.num_classes))
        out = []
        for p, c in zip(top.values.tolist(), top.indices.tolist()):
            entry: dict[str, Any] = {"class": int(c), "name": self.class_names[c], "prob": float(p)}
            if heads and result.conv_probs is not None and result.trans_probs is not None:
                entry["cnn_prob"] = float(result.conv_probs[c])
                entry["transformer_prob"] = float(result.trans_probs[c])
            out.append(entry)
        return out

    def explain(self, image: torch.Tensor) -> dict[str, Any]:
        """Grad-CAM of the fused top-1 class on both branches (``visualize.explain``), as PNG data URLs
        of the heat map over the preprocessed image, plus the explained class."""
        from ..visualize import _denormalise, explain, to_image_space

        if not isinstance(self.predictor, TorchPredictor):
            raise ConfigError("Grad-CAM needs a PyTorch model (a checkpoint or a hub folder), not an ONNX graph")
        model = self.predictor.model
        exp = explain(model, image.to(next(model.parameters()).device))
        pre = self.predictor.preprocess
        rgb = _denormalise(exp.input, pre.mean, pre.std)  # (H, W, 3) in [0, 1]
        hw = rgb.shape[:2]
        overlays = {
            branch: _data_url(_overlay(rgb, to_image_space(cam, exp.padding, hw, smooth=True)))
            for branch, cam in (("cnn", exp.cam_cnn), ("transformer", exp.cam_trans))
        }
        return {
            "class": exp.target,
            "name": self.class_names[exp.target],
            "prob": float(exp.probs[exp.target]),
            "input": _data_url(_to_uint8(rgb)),
            "overlays": overlays,
        }

    def warm_up(self, batch_size: int) -> None:
        """Run a batch of ``batch_size`` and one of 1 (first calls allocate and pick kernels)."""
        shape = (3, *self.predictor.preprocess.input_size)
        for n in sorted({batch_size, 1}, reverse=True):
            self.predictor.heads(torch.zeros(n, *shape))


DISPLAY_SIDE = 224
"""Overlays smaller than this are scaled up for display (a 32x32 input would be a speck on a page)."""


def _overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Grad-CAM over the image as ``visualize`` draws it: greyscale image, jet heat map at alpha 0.5."""
    from matplotlib import colormaps

    grey = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2)
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    return _to_uint8(0.5 * grey + 0.5 * heat)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _data_url(pixels: np.ndarray) -> str:
    """(H, W, 3) uint8 -> ``data:image/png;base64,...``, scaled up to DISPLAY_SIDE when smaller."""
    from PIL import Image

    img = Image.fromarray(pixels)
    side = min(img.size)
    if side < DISPLAY_SIDE:
        scale = DISPLAY_SIDE / side
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num_classes(predictor: Predictor) -> int:
    if predictor.class_names:
        return len(predictor.class_names)
    shape = (1, 3, *predictor.preprocess.input_size)
    return int(predictor.fused(torch.zeros(shape)).shape[1])


def _precision_name(predictor: Predictor) -> str:
    dtype = getattr(predictor, "amp_dtype", None)
    if predictor.backend != "torch":
        return "as exported"
    return {None: "float32", torch.float16: "float16 autocast", torch.bfloat16: "bfloat16 autocast"}[dtype]


def open_served_model(
    path: str | Path,
    *,
    arch: str | None = None,
    device: str = "cpu",
    use_ema: bool = False,
    precision: str = "O0",
    threads: int | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> ServedModel:
    """The model behind ``conformer serve``: a checkpoint or weights file, an ONNX export, or a
    hub-layout folder. ``precision`` is an ``amp_level`` (autocast applies to PyTorch models; an ONNX
    graph runs in the precision it was exported in). Raises ConformerError subclasses for bad input.
    """
    path = Path(path)
    dtype = amp_dtype(precision)
    if path.is_dir():
        predictor: Predictor = _open_hub_folder(path, device=device, amp_dtype=dtype, use_ema=use_ema)
        kind = "hub folder"
        if image_size is not None:
            predictor.preprocess = dataclasses.replace(predictor.preprocess, input_size=image_size)
    else:
        if path.suffix.lower() == ".onnx" and dtype is not None:
            raise ConfigError(
                f"--amp_level {precision} applies to checkpoints run by PyTorch; {path.name} is an ONNX graph, "
                "which runs in the precision it was exported in (use O0, or export with --quantize for int8)"
            )
        predictor = open_predictor(
            path, arch=arch, device=device, use_ema=use_ema, amp_dtype=dtype, image_size=image_size, threads=threads
        )
        kind = "onnx" if path.suffix.lower() == ".onnx" else "checkpoint"
    return ServedModel(predictor, path, kind)


def _open_hub_folder(folder: Path, *, device: str, amp_dtype: torch.dtype | None, use_ema: bool) -> TorchPredictor:
    """A hub-layout folder (``config.json`` + ``model.safetensors``, as timm's ``push_to_hf_hub`` /
    ``save_for_hf`` write it) built by timm itself: ``timm.create_model("local-dir:FOLDER",
    pretrained=True)`` (the Conformer variants are registered in timm); class names and preprocessing
    from the config's ``label_names`` and ``pretrained_cfg``."""
    import timm

    from ..models import Conformer

    if not (folder / HUB_CONFIG).is_file() or not (folder / HUB_WEIGHTS).is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:6]) or "nothing"
        raise CheckpointError(
            f"{folder} is a folder but not a hub-layout model: it needs {HUB_CONFIG} and {HUB_WEIGHTS} "
            f"(found: {present}); pass a checkpoint (.pt), a weights file or an .onnx export instead"
        )
    if use_ema:
        raise ConfigError("--use_ema applies to checkpoints; a hub folder holds one set of weights")
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except (KeyError, TypeError, json.JSONDecodeError) as e:  # a config.json that is not timm's
        raise CheckpointError(f"{folder / HUB_CONFIG} is not a timm model config ({type(e).__name__}: {e})") from None
    except (RuntimeError, ValueError) as e:  # an unknown architecture, weights that do not fit
        raise CheckpointError(
            f"{folder}: timm cannot build the model it describes ({str(e).splitlines()[0][:300]})"
        ) from None
    if not isinstance(model, Conformer):
        raise CheckpointError(
            f"{folder} holds a {type(model).__name__} ({model.pretrained_cfg.get('architecture')}), "
            "not a Conformer: conformer serve runs Conformer models"
        )
    return TorchPredictor(
        model,
        device,
        amp_dtype,
        class_names=model.pretrained_cfg.get("label_names"),
        preprocess=default_preprocess(model),
        arch=getattr(model, "variant", None),
    )
