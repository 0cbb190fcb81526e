"""Static figures of a run: the confusion matrix and the training curves (matplotlib, Agg).

Figures are built with ``matplotlib.figure.Figure`` and an explicit Agg canvas, never through
``pyplot``: no global figure registry, no GUI backend, nothing left open after a call, so these
functions are safe to call from training, evaluation and tests in the same process.

``metrics.jsonl`` (written by training, one JSON object per line) is read tolerantly: records are
``{"kind": "train"|"val", "epoch", "step", "time", ...}``; train records carry ``loss``, ``lr``,
``images_per_s``; val records carry the ``ClassificationMeter`` summary (``Loss``, ``Top1-Acc``,
``conv_top1``, ``trans_top1``, ...) and possibly ``ema_``-prefixed copies. Missing keys just leave
a curve out; a truncated last line (a run killed mid-write) is skipped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConformerError

__all__ = ["new_figure", "save_figure", "plot_confusion_matrix", "read_metrics", "plot_training_curves"]

log = logging.getLogger("conformer_vision.plots")

METRICS_FILE = "metrics.jsonl"
ANNOTATE_MAX_CLASSES = 20  # counts are written into the cells up to this many classes
LABEL_MAX_CLASSES = 100  # every tick is labelled up to this many classes, then every n-th


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG by default), creating parent folders."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except (OSError, ValueError) as e:
        raise ConformerError(f"cannot write figure {path}: {e}") from None
    return path


# ---------------------------------------------------------------------------------------------
# Confusion matrix


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str], path: str | Path, title: str | None = None
) -> Path:
    """Draw a confusion matrix (rows = true class, columns = predicted) to ``path``.

    Colours are row-normalised (the fraction of each true class predicted as each class, so the
    diagonal is per-class recall); the raw counts are written in the cells for up to
    ``ANNOTATE_MAX_CLASSES`` classes. The figure grows with the class count and stays readable
    to about 100 classes (smaller tick labels, then every n-th label).

    Args:
        confusion: (K, K) integer counts, e.g. ``ClassificationMeter.confusion.numpy()``.
        class_names: K names, index -> name.
        path: output image file.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ConformerError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    k = cm.shape[0]
    if len(class_names) != k:
        raise ConformerError(f"confusion matrix is {k}x{k} but {len(class_names)} class names were given")
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)

    side = float(np.clip(2.0 + 0.16 * k, 5.0, 20.0))
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")
    _label_classes(ax, list(class_names))
    if k <= ANNOTATE_MAX_CLASSES:
        _annotate_counts(ax, cm, norm)
    n = int(cm.sum())
    acc = float(np.trace(cm)) / n if n else float("nan")
    ax.set_title(title or f"confusion matrix: {n} samples, top-1 {100 * acc:.2f}%")
    return save_figure(fig, path)


def _label_classes(ax: Axes, names: list[str]) -> None:
    """Tick labels on both axes, shrinking (and thinning beyond 100 classes) as K grows."""
    k = len(names)
    step = max(1, math.ceil(k / LABEL_MAX_CLASSES))
    ticks = np.arange(0, k, step)
    fontsize = float(np.clip(11 - k / 10, 4.5, 10))
    labels = [names[i] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90 if k > 10 else 45, ha="center" if k > 10 else "right", fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")


def _annotate_counts(ax: Axes, cm: np.ndarray, norm: np.ndarray) -> None:
    """Write each non-zero count into its cell, white on dark cells."""
    k = cm.shape[0]
    fontsize = float(np.clip(14 - 0.5 * k, 6, 11))
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour, fontsize=fontsize)


# ---------------------------------------------------------------------------------------------
# Training curves


def read_metrics(run_dir_or_file: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """The records of a run's ``metrics.jsonl`` (a run folder or the file itself) and the file path.

    Lines that are not JSON objects (a truncated last line) are skipped with a warning; a missing
    file, or one without any record, is a ConformerError.
    """
    p = Path(run_dir_or_file)
    file = p / METRICS_FILE if p.is_dir() else p
    if not file.is_file():
        where = f"run folder {p} has no {METRICS_FILE}" if p.is_dir() else f"{file}: no such file"
        raise ConformerError(f"{where}; pass a run folder written by `conformer train` or its {METRICS_FILE}")
    records, bad = [], 0
    with open(file, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    if bad:
        log.warning("%s: skipped %d line(s) that are not JSON objects", file, bad)
    if not records:
        raise ConformerError(f"{file} holds no metrics records (empty file?); train for at least one logging step")
    return records, file


def _series(records: list[dict[str, Any]], kind: str, key: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of ``key`` over records of ``kind`` that have a finite number for both."""
    xs, ys = [], []
    for r in records:
        if r.get("kind") != kind:
            continue
        x, y = r.get(x_key), r.get(key)
        if _is_number(x) and _is_number(y) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# (label, record kind, key, line style, colour) per panel; EMA copies are added when present.
Curve = tuple[str, str, str, str, str]
_LOSS_CURVES: list[Curve] = [
    ("train loss", "train", "loss", "-", "C0"),
    ("val loss (fused)", "val", "Loss", "o-", "C1"),
    ("val conv_loss", "val", "conv_loss", "s--", "C2"),
    ("val trans_loss", "val", "trans_loss", "^--", "C3"),
]
_TOP1_CURVES: list[Curve] = [
    ("fused", "val", "Top1-Acc", "o-", "C1"),
    ("CNN head", "val", "conv_top1", "s--", "C2"),
    ("transformer head", "val", "trans_top1", "^--", "C3"),
]


def plot_training_curves(run_dir_or_metrics_jsonl: str | Path, path: str | Path | None = None) -> Path:
    """Draw loss (train and val), learning rate and val top-1 (fused, each head, EMA) of a run.

    The x axis is the optimizer step (the epoch when records carry no step); the top axis marks
    where each epoch ends. EMA curves (``ema_`` keys) are dotted, in their raw curve's colour.
    Axes spanning more than a decade (warm-up lr, early losses) are logarithmic.
    Default output: ``curves.png`` next to ``metrics.jsonl``.
    """
    records, file = read_metrics(run_dir_or_metrics_jsonl)
    x_key = "step" if any(_is_number(r.get("step")) for r in records) else "epoch"
    fig = new_figure(15, 4.2)
    axes = fig.subplots(1, 3)
    drawn = [
        _draw(axes[0], records, _LOSS_CURVES + _ema(_LOSS_CURVES[1:2]), x_key, "loss"),
        _draw(axes[1], records, [("learning rate", "train", "lr", "-", "C0")], x_key, "learning rate"),
        _draw(axes[2], records, _TOP1_CURVES + _ema(_TOP1_CURVES), x_key, "val top-1"),
    ]
    if not any(drawn):
        raise ConformerError(f"{file} has no loss, lr or accuracy values to plot")
    for ax in axes:
        _mark_epochs(ax, records, x_key)
    fig.suptitle(f"{file.resolve().parent.name}: {len(records)} records")
    return save_figure(fig, Path(path) if path is not None else file.parent / "curves.png")


def _ema(curves: list[Curve]) -> list[Curve]:
    return [(f"EMA {label}", kind, f"ema_{key}", ":", colour) for label, kind, key, _, colour in curves]


def _draw(ax: Axes, records: list[dict[str, Any]], curves: list[Curve], x_key: str, ylabel: str) -> int:
    """Plot every curve that has data; returns how many were drawn."""
    drawn, values = 0, []
    for label, kind, key, style, colour in curves:
        x, y = _series(records, kind, key, x_key)
        if len(x):
            marker = style if len(x) < 60 else style.lstrip("os^")
            width = 1.2 if kind == "train" else 1.6
            ax.plot(x, y, marker or "-", color=colour, label=label, markersize=4, linewidth=width)
            drawn, values = drawn + 1, values + [y]
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
        low, high = float(np.concatenate(values).min()), float(np.concatenate(values).max())
        if low > 0 and high / low > 10:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return drawn


def _mark_epochs(ax: Axes, records: list[dict[str, Any]], x_key: str) -> None:
    """Top-axis ticks at the last step of each epoch (x = step only)."""
    if x_key != "step":
        return
    last: dict[int, float] = {}
    for r in records:
        if _is_number(r.get("epoch")) and _is_number(r.get("step")):
            e = int(r["epoch"])
            last[e] = max(last.get(e, -math.inf), float(r["step"]))
    if not 1 <= len(last) <= 50:
        return
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(last.values()), [str(e) for e in last], fontsize=7)
    top.set_xlabel("epoch", fontsize=8)
