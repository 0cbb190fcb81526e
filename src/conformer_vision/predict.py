"""Classify image files with a checkpoint or an ONNX export (through ``runtime.Predictor``).

Images are decoded with ``data.images.load_rgb`` and preprocessed with the model file's
``Preprocess.eval_transform`` (the same functions as training and evaluation), in batches. A file
that cannot be decoded is reported with its reason and the others are still predicted.

Output (the specification's JSON): ``{path: class}``; with top-k, each value is a list of
``{"class": id, "name": class name, "prob": probability}``, best first. Nothing else is mixed into
that mapping (an image may well be named ``errors``): unreadable files go to a second file beside
it, ``errors_path(output)`` (``predictions.json`` -> ``predictions.errors.json``), as
``{path: reason}``; it is written on every run, ``{}`` when every file was read, so it never
describes an earlier run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .data.images import list_images, load_rgb
from .data.transforms import Preprocess
from .errors import ConformerError, DataError, ImageDecodeError
from .runtime import Predictor
from .serialization import write_text_atomic

__all__ = ["collect_images", "errors_path", "predict_paths", "predictions_json", "write_json"]

log = logging.getLogger("conformer_vision.predict")

Prediction = list[dict[str, Any]]  # [{"class": id, "name": str, "prob": float}, ...] best first


def collect_images(data: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """The image files named by ``data``: files as given, folders expanded (``list_images``).

    Raises DataError for folders without images and when none of the paths exists. A file is taken
    as given even with an unusual extension, so a non-image is reported as such; a missing path
    among existing ones is kept too, so it is reported as an error and the others still predicted.
    """
    files: list[Path] = []
    missing: list[Path] = []
    for item in data:
        path = Path(item)
        if path.is_dir():
            found = list_images(path, recursive=recursive)
            if not found:
                hint = "" if recursive else " (use --recursive for sub-folders)"
                raise DataError(f"no image files in folder {path}{hint}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            missing.append(path)
            files.append(path)
    if missing and len(missing) == len(data):
        more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: no such file or folder{more}")
    return files


class _ImageFiles(Dataset):
    """(index, image tensor (3, H, W), error reason or '') per path; a zero image on failure."""

    def __init__(self, paths: list[Path], preprocess: Preprocess) -> None:
        self.paths, self.transform = paths, preprocess.eval_transform()
        self.blank = torch.zeros(3, *preprocess.input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            return i, self.transform(load_rgb(self.paths[i])), ""
        except ImageDecodeError as e:
            return i, self.blank, e.reason


def predict_paths(
    predictor: Predictor, paths: Sequence[str | Path], topk: int = 1, batch_size: int = 32, workers: int = 0
) -> tuple[dict[str, Prediction], dict[str, str]]:
    """Top-k predictions of the fused logits for each image file.

    Returns ``(results, errors)``: ``results[str(path)]`` is a list of ``topk`` (at most the number
    of classes) ``{"class", "name", "prob"}`` dicts, best first, in the order of ``paths``;
    ``errors[str(path)]`` is why a file could not be read.
    """
    if topk < 1:
        raise ConformerError(f"topk must be >= 1, got {topk}")
    if batch_size < 1:
        raise ConformerError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConformerError(f"workers must be >= 0 (0 = decode in this process), got {workers}")
    files = [Path(p) for p in paths]
    loader = DataLoader(_ImageFiles(files, predictor.preprocess), batch_size=batch_size, num_workers=workers)
    names = predictor.class_names
    results: dict[str, Prediction] = {}
    errors: dict[str, str] = {}
    for index, images, reasons in loader:
        ok = [j for j, reason in enumerate(reasons) if not reason]
        for j, reason in enumerate(reasons):
            if reason:
                errors[str(files[int(index[j])])] = reason
        if not ok:
            continue
        probs = predictor.fused(images[ok]).double().softmax(dim=1)  # (b, K)
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        for row, j in enumerate(ok):
            results[str(files[int(index[j])])] = [
                {"class": int(c), "name": names[int(c)] if names else str(int(c)), "prob": float(p)}
                for p, c in zip(top.values[row], top.indices[row])
            ]
    order = {str(f): i for i, f in enumerate(files)}
    return dict(sorted(results.items(), key=lambda kv: order[kv[0]])), errors


def predictions_json(results: dict[str, Prediction], topk: int | None = None) -> dict[str, Any]:
    """The specification's JSON document: ``{path: class}``, or ``{path: [top-k dicts]}`` when
    ``topk`` is given; unreadable files are not in it (see ``errors_path``)."""
    return {path: (preds[:topk] if topk is not None else preds[0]["class"]) for path, preds in results.items()}


def errors_path(output: str | Path) -> Path:
    """Where the unreadable files of the predictions written to ``output`` go: beside it, ``.errors``
    before the suffix (``predictions.json`` -> ``predictions.errors.json``)."""
    output = Path(output)
    suffix = output.suffix or ".json"
    return output.with_name(f"{output.name[: len(output.name) - len(output.suffix)]}.errors{suffix}")


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write ``doc`` to ``path``, replacing the file if it exists, atomically
    (``serialization.write_text_atomic``: a reader never sees half a file, a failed write leaves
    no temporary file). Raises ConformerError naming the path when the file cannot be written
    (disk full, permissions)."""
    try:
        return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise ConformerError(
            f"could not write {path}: {e.strerror or e}; nothing was replaced: choose another --output"
        ) from None
