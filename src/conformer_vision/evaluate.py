"""Evaluate a model (checkpoint or ONNX, through ``runtime.Predictor``) on an ImageFolder split, or on
the val shards of a sharded dataset (``data_format: webdataset``, ``data.shards``).

The images go through the same pieces as training-time validation: ``data.ImageFolderDataset``
(class list from the model file, so val folders map to classes by name), the eval transform of
``data.transforms.Preprocess``, and ``metrics.ClassificationMeter`` for the loss, top-1 and top-5 of
the fused prediction and of each head, plus the confusion matrix.

Unreadable images are dropped, not replaced (``bad_policy="drop"``): the metrics are those of the
readable images, each counted once, and the dropped files are counted and named in the result and
the report. Over the budget (``max_bad_files_fraction`` of the split) the evaluation stops.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .config import Config
from .data.datasets import ImageFolderDataset, build_class_list, eval_loader
from .data.shards import ShardDataset, ShardSplit, open_split, shards_info_url
from .data.transforms import Preprocess
from .errors import CheckpointError, ConformerError
from .metrics import ClassificationMeter
from .predict import write_json
from .runtime import Predictor

__all__ = ["eval_source", "evaluate_dataset", "format_eval_line", "format_report", "write_report"]

log = logging.getLogger("conformer_vision.evaluate")


def eval_source(cfg: Config) -> Path | ShardSplit:
    """What ``conformer eval`` reads: ``<data_url>/<val_dir>``, or with ``data_format: webdataset``
    the val shards (``val_shards``, or those ``shards_info`` lists)."""
    if cfg.data_format == "webdataset":
        return open_split(shards_info_url(cfg.data_url, cfg.shards_info), "val", cfg.val_shards)
    return Path(cfg.data_url) / cfg.val_dir


def evaluate_dataset(
    predictor: Predictor,
    val_root: str | Path | ShardSplit,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    batch_size: int = 64,
    workers: int = 0,
    num_samples: int = -1,
    prefetch: int = 2,
    progress: bool = False,
    max_bad_files_fraction: float = 0.01,
) -> dict[str, Any]:
    """Metrics of ``predictor`` on the readable images under ``val_root/<class>/`` (or of the shards
    of a ``ShardSplit``, read by ``workers`` streams, labels mapped to ``class_names`` by name).

    Args:
        class_names: the model's classes (index -> name); default: the predictor's (from the
            checkpoint / ONNX metadata), else the sorted folder names of ``val_root`` (with a warning).
        preprocess: default: the predictor's.
        workers: DataLoader worker processes (0 = decode in this process).
        num_samples: -1 for every image, else a fixed subset of this size.
        prefetch: batches decoded ahead of the model, in total over the workers.
        max_bad_files_fraction: unreadable images tolerated (dropped, counted and named) before a
            DataError.

    Returns:
        ``ClassificationMeter.summary()`` ({'Loss', 'Top1-Acc', 'Top5-Acc', 'conv_*', 'trans_*',
        'num_samples'}: the readable images only; no per-head keys for a single-output ONNX graph)
        plus ``num_images`` (entries of the split, readable or not), ``bad_files`` (list of str: the
        unreadable ones, not counted), ``input_size`` ([H, W] the images were resized to),
        ``per_class`` (list of {'class', 'name', 'samples', 'top1'}), ``confusion`` ((K, K) int64
        array, rows = true class) and ``model`` (a description).
    """
    if batch_size < 1:
        raise ConformerError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConformerError(f"workers must be >= 0 (0 = decode in this process), got {workers}")
    preprocess = preprocess or predictor.preprocess
    class_names = class_names or predictor.class_names
    if class_names is None:
        class_names = list(val_root.classes) if isinstance(val_root, ShardSplit) else build_class_list(val_root)
        log.warning("the model file names no classes: taking class i = the i-th sorted folder of %s", val_root)
    dataset: ImageFolderDataset | ShardDataset
    if isinstance(val_root, ShardSplit):
        dataset = ShardDataset(
            val_root,
            preprocess.eval_transform(),
            training=False,
            num_workers=workers,
            classes=class_names,
            num_samples=num_samples,
            max_bad_fraction=max_bad_files_fraction,
        )
    else:
        dataset = ImageFolderDataset(
            val_root,
            preprocess.eval_transform(),
            classes=class_names,
            num_samples=num_samples,
            max_bad_fraction=max_bad_files_fraction,
            bad_policy="drop",
        )
    device = getattr(predictor, "device", None)  # a torch.device for TorchPredictor
    loader = eval_loader(
        dataset,
        batch_size,
        num_workers=workers,
        prefetch=prefetch,
        pin_memory=device is not None and device.type == "cuda",
    )
    meter = ClassificationMeter(len(class_names))
    for images, targets in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        conv, trans = predictor.heads(images)  # (B, K) each
        if conv.shape[1] != len(class_names):
            raise CheckpointError(
                f"the model predicts {conv.shape[1]} classes but its class list has {len(class_names)} "
                f"({class_names[:5]}...): the model file and its class names do not match"
            )
        meter.update(conv, trans, targets)
    return _result(meter, class_names, predictor, dataset, preprocess)


def _result(
    meter: ClassificationMeter,
    class_names: list[str],
    predictor: Predictor,
    dataset: ImageFolderDataset | ShardDataset,
    preprocess: Preprocess,
) -> dict[str, Any]:
    if not meter.count:
        raise ConformerError(f"no readable image under {dataset.root}: nothing to evaluate")
    out: dict[str, Any] = meter.summary()
    if not predictor.has_heads:
        out = {k: v for k, v in out.items() if not k.startswith(("conv_", "trans_"))}
    confusion = meter.confusion.numpy() if meter.confusion is not None else np.zeros((0, 0), np.int64)
    samples = confusion.sum(1)
    accuracy = meter.per_class_accuracy()
    out["per_class"] = [
        {"class": i, "name": name, "samples": int(samples[i]), "top1": None if math.isnan(acc) else acc}
        for i, (name, acc) in enumerate(zip(class_names, accuracy))
    ]
    out["confusion"] = confusion
    out["num_images"] = dataset.num_entries
    out["bad_files"] = [str(p) for p in dataset.bad_files]
    out["input_size"] = list(preprocess.input_size)
    describe = getattr(predictor, "describe", None)
    out["model"] = describe() if describe else type(predictor).__name__
    if dataset.bad_files:
        log.warning(
            "%d of %d images were unreadable and are not counted in the metrics: %s",
            len(dataset.bad_files),
            dataset.num_entries,
            out["bad_files"][:5],
        )
    return out


def format_eval_line(result: dict[str, Any], with_loss: bool = True) -> str:
    """The specification's line, e.g. ``eval results: {'Loss': 1.4204, 'Top1-Acc': 0.731066, 'Top5-Acc': 0.90621}``."""
    shown = {"Loss": round(result["Loss"], 4)} if with_loss else {}
    shown.update({"Top1-Acc": round(result["Top1-Acc"], 6), "Top5-Acc": round(result["Top5-Acc"], 6)})
    return f"eval results: {shown}"


def format_report(result: dict[str, Any], max_classes: int = 50) -> str:
    """Per-head lines and the per-class table (all classes up to ``max_classes``, else the worst
    and the best ``max_classes // 2``)."""
    lines = [_samples_line(result)]
    bad = result.get("bad_files") or []
    if bad:
        more = f" and {len(bad) - 5} more (all in --output)" if len(bad) > 5 else ""
        lines.append(f"not counted (unreadable): {', '.join(bad[:5])}{more}")
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


def _samples_line(result: dict[str, Any]) -> str:
    """``samples: 100 of 109 images (9 unreadable, not counted), input 32x32``."""
    count = int(result["num_samples"])
    bad = len(result.get("bad_files") or [])
    line = f"samples: {count}"
    if bad:
        line += f" of {result.get('num_images', count + bad)} images ({bad} unreadable, not counted)"
    if result.get("input_size"):
        h, w = result["input_size"]
        line += f", input {h}x{w}"
    return line


def write_report(result: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the metrics (everything but the confusion matrix) as JSON to ``path``, replacing the
    file if it exists (atomically: a reader sees the old file or the new one, never half)."""
    data = {k: v for k, v in result.items() if k != "confusion"}
    data.update(extra or {})
    return write_json(data, path)
