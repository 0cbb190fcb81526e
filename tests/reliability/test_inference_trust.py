"""Scenarios 21, 23, 28, 29, 31 and 33 of docs/reliability.md (evaluation, prediction and export):
metrics of the readable images only, a model file that contradicts the command line, impossible
output paths, bad counts and foreign ONNX graphs, and the specification's prediction JSON kept pure.

Everything runs on the session's reference run (conformer_mini_test, 2 classes, 32x32) and its ONNX
export; foreign ONNX graphs are tiny modules exported with the legacy tracer.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conformer_vision.data.images import load_rgb
from conformer_vision.runtime import grey_preprocess

from .conftest import assert_user_error, checkpoints, conformer, conformer_inprocess, noise_image, write_bad_files


def _eval(data: Path, model: Path, *extra: object) -> tuple:
    return (
        "eval",
        "--checkpoint",
        model,
        "--data_url",
        data,
        "--val_dir",
        "val",
        "--device_target",
        "cpu",
        "--num_parallel_workers",
        "0",
        "--batch_size",
        "3",
        *extra,
    )


def _one_error_line(stderr: str) -> str:
    """The error line; the assertion is that the error is exactly one line of text."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-3000:]
    return errors[0]


# ---- 21: evaluation drops unreadable images --------------------------------------------------- #


@pytest.mark.slow
def test_21_eval_drops_unreadable_images_and_counts_only_good_ones(dataset, reference_run, onnx_model, tmp_path):
    """8 good val images + 3 unreadable ones (truncated, text, empty): the metrics are exactly those
    of the 8 good ones, counted once; the 3 are counted and named. eval-onnx likewise, in a real
    process with 2 decoding workers, and its default budget (1%) is a clear error naming the option."""
    data = tmp_path / "data"
    shutil.copytree(dataset / "val", data / "val")
    bad = write_bad_files(tmp_path / "junk")
    junk = sorted(
        str(shutil.copy(bad[kind], data / "val" / "cat" / f"zz_{kind}.jpg")) for kind in ("truncated", "text", "empty")
    )
    ckpt = checkpoints(reference_run)[-1]
    clean = tmp_path / "clean.json"
    assert conformer_inprocess(*_eval(dataset, ckpt, "--output", clean)).rc == 0
    dirty = tmp_path / "dirty.json"
    result = conformer_inprocess(*_eval(data, ckpt, "--output", dirty, "--max_bad_files_fraction", "0.3"))
    assert result.rc == 0, result.output[-3000:]
    expected, got = json.loads(clean.read_text()), json.loads(dirty.read_text())
    for key in ("Loss", "Top1-Acc", "Top5-Acc", "conv_top1", "trans_loss", "num_samples"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["num_samples"] == 8 and got["num_images"] == 11 and got["bad_files"] == junk
    assert [row["samples"] for row in got["per_class"]] == [4, 4]
    assert "samples: 8 of 11 images (3 unreadable, not counted), input 32x32" in result.stdout
    assert f"not counted (unreadable): {junk[0]}" in result.stdout

    out = tmp_path / "onnx.json"
    spec = ("eval-onnx", data / "val", "--onnx_path", onnx_model, "--workers", "2", "--batch_size", "3")
    result = conformer(*spec, "--max_bad_files_fraction", "0.3", "--output", out)
    assert result.rc == 0, result.output[-3000:]
    onnx = json.loads(out.read_text())
    assert onnx["num_samples"] == 8 and onnx["bad_files"] == junk
    assert onnx["Top1-Acc"] == expected["Top1-Acc"] and abs(onnx["Loss"] - expected["Loss"]) < 1e-4
    result = conformer_inprocess("eval-onnx", data / "val", "--onnx_path", onnx_model, "--workers", "0")
    assert_user_error(
        result, "too many unreadable images", "(budget 0: max_bad_files_fraction 0.01", "raise --max_bad_files_fraction"
    )


# ---- 23: the model file against --arch / --num_classes / --image_size ------------------------- #


@pytest.mark.slow
def test_23_a_contradicting_arch_or_num_classes_is_an_error_in_predict_export_and_eval(
    dataset, reference_run, onnx_model, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)  # export's default output goes to the current folder
    ckpt = checkpoints(reference_run)[-1]
    image = tmp_path / "a.png"
    noise_image(3).save(image)
    holds = "which holds arch conformer_mini_test, num_classes 2"
    for model in (ckpt, onnx_model):
        result = conformer_inprocess(
            "predict", image, "--checkpoint", model, "--arch", "conformer_tiny", "--output", tmp_path / "p.json"
        )
        assert_user_error(result, "arch conformer_tiny (command line) contradicts", holds, "drop --arch")
        assert not (tmp_path / "p.json").exists()
    result = conformer_inprocess("export", "--checkpoint", ckpt, "--arch", "conformer_tiny", "--file_format", "ONNX")
    assert_user_error(result, "arch conformer_tiny (command line) contradicts", holds)
    assert not list(tmp_path.glob("conformer_tiny*"))
    result = conformer_inprocess(*_eval(dataset, ckpt, "--num_classes", "5"))
    assert_user_error(result, "num_classes 5 (command line) contradicts", holds, "drop --num_classes")
    # The spec's workflow: eval --config CFG, where CFG is a recipe for another variant. A warning
    # naming both values; the checkpoint's are used.
    config = tmp_path / "conformer_tiny.yaml"
    config.write_text("arch: conformer_tiny\nnum_classes: 1000\nimage_size: 224\n")
    with caplog.at_level("WARNING"):
        result = conformer_inprocess("eval", "--config", config, *_eval(dataset, ckpt)[1:])
    assert result.rc == 0, result.output[-3000:]
    assert f"arch conformer_tiny_patch16 (config file {config}) differs from {ckpt}, {holds}" in caplog.text
    assert f"num_classes 1000 (config file {config}) differs" in caplog.text
    assert "image_size 224x224 (config file) differs from what" in caplog.text
    assert "at 32x32 (recorded in the model file)" in result.stdout


@pytest.mark.slow
def test_23_eval_honours_image_size_and_prints_it(dataset, reference_run, tmp_path):
    ckpt = checkpoints(reference_run)[-1]
    metrics = {}
    for size in ("32", "48"):
        out = tmp_path / f"{size}.json"
        result = conformer_inprocess(
            *_eval(dataset, ckpt, "--output", out, *(("--image_size", size) if size == "48" else ()))
        )
        assert result.rc == 0, result.output[-3000:]
        metrics[size] = json.loads(out.read_text())
    assert "at 48x48 (--image_size; the model file records 32x32)" in result.stdout
    assert "input 48x48" in result.stdout
    assert metrics["32"]["input_size"] == [32, 32] and metrics["48"]["input_size"] == [48, 48]
    assert metrics["48"]["Loss"] != pytest.approx(metrics["32"]["Loss"], abs=1e-6)  # really another input


# ---- 28: impossible output paths -------------------------------------------------------------- #


@pytest.mark.slow
def test_28_impossible_output_paths_are_one_line_errors_before_any_work(dataset, reference_run, tmp_path):
    ckpt = checkpoints(reference_run)[-1]
    a_file = tmp_path / "some_file.yaml"
    a_file.write_text("arch: conformer_mini_test\n")
    image = tmp_path / "a.png"
    noise_image(4).save(image)
    cases = [
        (("export", "--checkpoint", ckpt, "--output", "/proc/x.onnx"), "--output /proc/x.onnx cannot be written"),
        (("export", "--checkpoint", ckpt, "--output", a_file / "out.onnx"), f"{a_file} is a file, not a folder"),
        (_eval(dataset, ckpt, "--output", "/proc/m.json"), "--output /proc/m.json cannot be written"),
        (_eval(dataset, ckpt, "--confusion_matrix", a_file / "cm.png"), f"--confusion_matrix {a_file / 'cm.png'}"),
        (("predict", image, "--checkpoint", ckpt, "--output", a_file / "p.json"), f"{a_file} is a file"),
    ]
    for args, fragment in cases:
        result = conformer_inprocess(*args)
        assert_user_error(result, fragment)
        assert fragment in _one_error_line(result.stderr)
        assert "eval results" not in result.stdout and "class:" not in result.stdout  # no work done
    # The case in a real process: nothing predicted or printed before the error.
    result = conformer("predict", image, "--checkpoint", ckpt, "--output", "/proc/p.json")
    assert_user_error(result, "--output /proc/p.json cannot be written")
    assert result.stdout == "" and "Traceback" not in result.stderr


# ---- 29: bad counts and foreign ONNX graphs --------------------------------------------------- #


@pytest.mark.slow
def test_29_negative_or_zero_counts_are_one_line_errors(dataset, onnx_model, tmp_path):
    image = tmp_path / "a.png"
    noise_image(5).save(image)
    predict = ("predict", image, "--checkpoint", onnx_model, "--output", tmp_path / "p.json")
    onnx_eval = ("eval-onnx", dataset / "val", "--onnx_path", onnx_model)
    cases = [
        ((*predict, "--batch_size", "0"), "--batch_size must be >= 1, got 0"),
        ((*predict, "--topk", "-2"), "--topk must be >= 1, got -2"),
        ((*onnx_eval, "--workers", "-3"), "--workers must be >= 0 (0 = in this process), got -3"),
        ((*onnx_eval, "--prefetch", "0"), "--prefetch must be >= 1, got 0"),
        ((*onnx_eval, "--batch_size", "-1"), "--batch_size must be >= 1, got -1"),
        ((*onnx_eval, "--max_bad_files_fraction", "2"), "--max_bad_files_fraction must be in [0, 1], got 2.0"),
    ]
    for args, fragment in cases:
        result = conformer_inprocess(*args)
        assert_user_error(result, fragment)
        _one_error_line(result.stderr)
    result = conformer(*predict, "--workers", "-1")  # the case, a real process
    assert_user_error(result, "--workers must be >= 0 (0 = in this process), got -1")
    assert not (tmp_path / "p.json").exists()


class _GreyNet(nn.Module):
    """A foreign classifier of 28x28 greyscale images (2 classes): conv, global pool, linear."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def _export_foreign(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """``model`` as a foreign ONNX file (no metadata) whose input shape is fixed to ``shape``."""
    with warnings.catch_warnings():  # the legacy exporter is deprecated, and fast
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(), torch.zeros(shape), str(path), input_names=["pixels"], output_names=["scores"], dynamo=False
        )
    return path


def test_29_foreign_onnx_with_one_channel_and_fixed_size_is_read_from_the_graph(dataset, tmp_path):
    """A graph taking exactly one (1, 1, 28, 28) input: images are converted to grey and resized to
    28x28, fed one at a time; the probabilities match the module on Pillow's own greyscale."""
    net = _GreyNet()
    model = _export_foreign(net, (1, 1, 28, 28), tmp_path / "grey.onnx")
    folder = dataset / "val" / "cat"
    out = tmp_path / "p.json"
    result = conformer_inprocess(
        "predict", folder, "--checkpoint", model, "--topk", "2", "--output", out, "--batch_size", "3"
    )
    assert result.rc == 0, result.output[-3000:]
    doc = json.loads(out.read_text())
    transform = grey_preprocess((28, 28)).eval_transform()  # equal mean/std on the 3 channels
    for path in sorted(folder.iterdir()):
        grey = transform(load_rgb(path).convert("L").convert("RGB"))[:1]  # Pillow's L, replicated: take one
        with torch.no_grad():
            expected = net(grey[None]).double().softmax(dim=1)[0]
        got = {p["class"]: p["prob"] for p in doc[str(path)]}
        assert np.allclose([got[0], got[1]], expected.tolist(), atol=2e-3), (path, got, expected)
    result = conformer_inprocess("eval-onnx", dataset / "val", "--onnx_path", model, "--workers", "0")
    assert result.rc == 0 and "samples: 8, input 28x28" in result.stdout, result.output[-3000:]
    result = conformer_inprocess("eval-onnx", dataset / "val", "--onnx_path", model, "--image_size", "32")
    assert_user_error(result, "takes only 28x28 images (fixed in the graph), not 32x32")


def test_29_foreign_onnx_that_images_cannot_feed_is_refused_in_one_line(dataset, tmp_path):
    model = _export_foreign(_GreyNet(channels=4), (2, 4, 28, 28), tmp_path / "four.onnx")
    image = tmp_path / "a.png"
    noise_image(6).save(image)
    result = conformer_inprocess("predict", image, "--checkpoint", model, "--output", tmp_path / "p.json")
    assert_user_error(
        result, "takes 4-channel input 'pixels' [2, 4, 28, 28]; only 1-channel (greyscale) and 3-channel (RGB) models"
    )
    _one_error_line(result.stderr)


# ---- 31: the specification's prediction JSON stays pure --------------------------------------- #


@pytest.mark.slow
def test_31_predict_json_holds_only_the_specs_mapping_and_errors_go_beside_it(reference_run, tmp_path, monkeypatch):
    """An image file literally named ``errors`` is predicted like any other; unreadable files are in
    predictions.errors.json, not in the mapping."""
    monkeypatch.chdir(tmp_path)
    noise_image(7).save(tmp_path / "errors", format="PNG")
    (tmp_path / "broken.jpg").write_text("not an image\n")
    result = conformer_inprocess("predict", "errors", "broken.jpg", "--checkpoint", checkpoints(reference_run)[-1])
    assert result.rc == 1, result.output[-3000:]
    doc = json.loads((tmp_path / "predictions.json").read_text())
    assert list(doc) == ["errors"] and isinstance(doc["errors"], int)  # the image, not a list of failures
    errors = json.loads((tmp_path / "predictions.errors.json").read_text())
    assert errors == {"broken.jpg": "not a recognised image format"}
    assert "1 files failed, listed in predictions.errors.json" in result.stderr
