"""Evaluate a model (checkpoint or ONNX, through ``runtime.Predictor``) on an ImageFolder split.

The images go through the same pieces as training-time validation: ``data.ImageFolderDataset``
(class list from the model file, so val folders map to classes by name; the bad-file policy),
the eval transform of ``data.transforms.Preprocess``, and ``metrics.ClassificationMeter`` for the
loss, top-1 and top-5 of the fused prediction and of each head, plus the confusion matrix.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.datasets import ImageFolderDataset, build_class_list
from .data.transforms import Preprocess
from .errors import CheckpointError, ConformerError
from .metrics import ClassificationMeter
from .runtime import Predictor

__all__ = ["evaluate_dataset", "format_eval_line", "format_report", "write_report"]

log = logging.getLogger("conformer_vision.evaluate")


def evaluate_dataset(
    predictor: Predictor,
    val_root: str | Path,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    batch_size: int = 64,
    workers: int = 0,
    num_samples: int = -1,
    prefetch: int = 2,
    progress: bool = False,
    max_bad_fraction: float = 0.01,
) -> dict[str, Any]:
    """Metrics of ``predictor`` on the images under ``val_root/<class>/``.

    Args:
        class_names: the model's classes (index -> name); default: the predictor's (from the
            checkpoint / ONNX metadata), else the sorted folder names of ``val_root`` (with a warning).
        preprocess: default: the predictor's.
        workers: DataLoader worker processes (0 = decode in this process).
        num_samples: -1 for every image, else a fixed subset of this size.
        prefetch: batches decoded ahead of the model, in total over the workers.
        max_bad_fraction: unreadable images tolerated (skipped and logged) before a DataError.

    Returns:
        ``ClassificationMeter.summary()`` ({'Loss', 'Top1-Acc', 'Top5-Acc', 'conv_*', 'trans_*',
        'num_samples'}; no per-head keys for a single-output ONNX graph) plus ``per_class`` (list of
        {'class', 'name', 'samples', 'top1'}), ``confusion`` ((K, K) int64 array, rows = true class),
        ``bad_files`` (list of str) and ``model`` (a description).
    """
    if batch_size < 1:
        raise ConformerError(f"batch_size must be >= 1, got {batch_size}")
    preprocess = preprocess or predictor.preprocess
    class_names = class_names or predictor.class_names
    if class_names is None:
        class_names = build_class_list(val_root)
        log.warning("the model file names no classes: taking class i = the i-th sorted folder of %s", val_root)
    dataset = ImageFolderDataset(val_root, preprocess.eval_transform(), classes=class_names,
                                 num_samples=num_samples, max_bad_fraction=max_bad_fraction)  # fmt: skip
    device = getattr(predictor, "device", None)  # a torch.device for TorchPredictor
    loader = _loader(dataset, batch_size, workers, prefetch, pin=device is not None and device.type == "cuda")
    meter = ClassificationMeter(len(class_names))
    for images, targets in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        conv, trans = predictor.heads(images)  # (B, K) each
        if conv.shape[1] != len(class_names):
            raise CheckpointError(
                f"the model predicts {conv.shape[1]} classes but its class list has {len(class_names)} "
                f"({class_names[:5]}...): the model file and its class names do not match"
            )
        meter.update(conv, trans, targets)
    return _result(meter, class_names, predictor, dataset)


def _loader(dataset: ImageFolderDataset, batch_size: int, workers: int, prefetch: int, pin: bool) -> DataLoader:
    """In-order loader; ``prefetch`` batches in flight in total (DataLoader counts per worker)."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["prefetch_factor"] = max(1, math.ceil(prefetch / workers))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin, **extra)


def _result(
    meter: ClassificationMeter, class_names: list[str], predictor: Predictor, dataset: ImageFolderDataset
) -> dict[str, Any]:
    out: dict[str, Any] = meter.summary()
    if not predictor.has_heads:
        out = {k: v for k, v in out.items() if not k.startswith(("conv_", "trans_"))}
    confusion = meter.confusion.numpy() if meter.confusion is not None else np.zeros((0, 0), np.int64)
    samples = confusion.sum(1)
    accuracy = meter.per_class_accuracy()
    out["per_class"] = [
        {"class": i, "name": name, "samples": int(samples[i]), "top1": None if math.isnan(acc) else acc}
        for i, (name, acc) in enumerate(zip(class_names, accuracy))
    ]  # fmt: skip
    out["confusion"] = confusion
    out["bad_files"] = [str(p) for p in dataset.bad_files]
    describe = getattr(predictor, "describe", None)
    out["model"] = describe() if describe else type(predictor).__name__
    if dataset.bad_files:
        log.warning("%d unreadable images were skipped (replaced by their neighbours): %s",
                    len(dataset.bad_files), out["bad_files"][:5])  # fmt: skip
    return out


def format_eval_line(result: dict[str, Any], with_loss: bool = True) -> str:
    """The specification's line, e.g. ``eval results: {'Loss': 1.4204, 'Top1-Acc': 0.731066, 'Top5-Acc': 0.90621}``."""
    shown = {"Loss": round(result["Loss"], 4)} if with_loss else {}
    shown.update({"Top1-Acc": round(result["Top1-Acc"], 6), "Top5-Acc": round(result["Top5-Acc"], 6)})
    return f"eval results: {shown}"


def format_report(result: dict[str, Any], max_classes: int = 50) -> str:
    """Per-head lines and the per-class table (all classes up to ``max_classes``, else the worst
    and the best ``max_classes // 2``)."""
    lines = [f"samples: {int(result['num_samples'])}"]
    for head in ("conv", "trans"):
        if f"{head}_top1" in result:
            lines.append(
                f"{head + ' head:':<12}top-1 {result[f'{head}_top1']:.6f}  top-5 {result[f'{head}_top5']:.6f}"
                f"  loss {result[f'{head}_loss']:.4f}"
            )
    rows = result["per_class"]
    if len(rows) > max_classes:
        ranked = sorted((r for r in rows if r["top1"] is not None), key=lambda r: r["top1"])
        half = max_classes // 2
        rows = ranked[:half] + ranked[-half:]
        lines.append(f"per-class top-1 (worst {half} and best {half} of {len(result['per_class'])}; all in --output):")
    else:
        lines.append("per-class top-1:")
    width = max([len("class")] + [len(r["name"]) for r in rows])
    lines.append(f"  {'id':>5}  {'class':<{width}}  {'samples':>7}  {'top-1':>8}")
    for r in rows:
        acc = "-" if r["top1"] is None else f"{r['top1']:.4f}"
        lines.append(f"  {r['class']:>5}  {r['name']:<{width}}  {r['samples']:>7}  {acc:>8}")
    return "\n".join(lines)


def write_report(result: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the metrics (everything but the confusion matrix) as JSON to ``path``."""
    path = Path(path)
    data = {k: v for k, v in result.items() if k != "confusion"}
    data.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path

