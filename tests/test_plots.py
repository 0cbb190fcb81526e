"""Confusion-matrix and training-curve figures, and the ``conformer plot`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conformer_vision.cli import main as cli_main
from conformer_vision.errors import ConformerError
from conformer_vision.plots import plot_confusion_matrix, plot_training_curves, read_metrics


def _png_stats(path: Path) -> tuple[int, int, float]:
    """(width, height, standard deviation of the grey pixels) of an image file."""
    with Image.open(path) as im:
        return im.width, im.height, float(np.asarray(im.convert("L"), dtype=np.float64).std())


def _no_open_pyplot_figures() -> bool:
    return "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def _write_metrics(path: Path, epochs: int = 3, ema: bool = True, truncated_tail: bool = True) -> Path:
    """A metrics.jsonl following the training schema: train records every 10 steps, val per epoch."""
    lines, step = [], 0
    for epoch in range(epochs):
        for _ in range(5):
            step += 10
            lines.append(
                {
                    "kind": "train",
                    "epoch": epoch,
                    "step": step,
                    "time": step * 0.5,
                    "loss": 2.3 * np.exp(-step / 60),
                    "lr": 1e-3 * min(1.0, step / 20),
                    "images_per_s": 80.0,
                }
            )
        val = {
            "kind": "val",
            "epoch": epoch,
            "step": step,
            "time": step * 0.5,
            "Loss": 1.5 - 0.3 * epoch,
            "Top1-Acc": 0.5 + 0.1 * epoch,
            "Top5-Acc": 0.9,
            "conv_loss": 1.6 - 0.3 * epoch,
            "conv_top1": 0.45 + 0.1 * epoch,
            "conv_top5": 0.88,
            "trans_loss": 1.7 - 0.3 * epoch,
            "trans_top1": 0.4 + 0.1 * epoch,
            "trans_top5": 0.85,
        }
        if ema:
            val.update({"ema_Top1-Acc": 0.48 + 0.1 * epoch, "ema_conv_top1": 0.44 + 0.1 * epoch, "ema_Loss": 1.4})
        lines.append(val)
    text = "".join(json.dumps(r) + "\n" for r in lines)
    path.write_text(text + ('{"kind": "train", "ep' if truncated_tail else ""))
    return path


def test_confusion_matrix_small(tmp_path: Path) -> None:
    cm = np.array([[50, 3, 0], [5, 40, 5], [0, 0, 0]])  # last class without samples: no division by zero
    out = plot_confusion_matrix(cm, ["cat", "dog", "bird"], tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    w, h, std = _png_stats(out)
    assert w > 400 and h > 400 and std > 10 and out.stat().st_size > 15_000
    assert _no_open_pyplot_figures()


@pytest.mark.slow
def test_confusion_matrix_hundred_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 3, (100, 100)) + np.diag(rng.integers(10, 30, 100))
    out = plot_confusion_matrix(cm, [f"n{i:08d}" for i in range(100)], tmp_path / "cm100.png")
    w, h, std = _png_stats(out)
    assert w > 1500 and h > 1500 and std > 5


def test_confusion_matrix_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ConformerError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3), int), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ConformerError, match="class names"):
        plot_confusion_matrix(np.zeros((2, 2), int), ["a"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_training_curves_default_path(tmp_path: Path) -> None:
    _write_metrics(tmp_path / "metrics.jsonl")
    records, _ = read_metrics(tmp_path)
    assert len(records) == 18  # the truncated last line is skipped
    out = plot_training_curves(tmp_path)
    assert out == tmp_path / "curves.png"
    w, h, std = _png_stats(out)
    assert w > 1000 and h > 300 and std > 10 and out.stat().st_size > 30_000
    assert _no_open_pyplot_figures()


def test_training_curves_tolerate_missing_keys(tmp_path: Path) -> None:
    # train records only, no step: the x axis falls back to the epoch
    lines = [{"kind": "train", "epoch": e, "loss": 1.0 / (e + 1)} for e in range(4)] + [{"kind": "other"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png")
    assert out == tmp_path / "c.png" and out.stat().st_size > 10_000


@pytest.mark.parametrize("content", [None, "", "\n\n", "not json\n", '{"kind": "train"}\n'])
def test_training_curves_clear_errors(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ConformerError, match="metrics.jsonl"):
        plot_training_curves(tmp_path)
    assert not (tmp_path / "curves.png").exists()


def test_cli_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_metrics(tmp_path / "metrics.jsonl", ema=False, truncated_tail=False)
    assert cli_main(["plot", str(tmp_path), "--output", str(tmp_path / "out" / "c.png")]) == 0
    assert (tmp_path / "out" / "c.png").stat().st_size > 30_000
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "c.png")
    assert cli_main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "Traceback" not in err
