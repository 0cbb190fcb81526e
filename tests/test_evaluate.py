"""evaluate + `conformer eval` / `conformer eval-onnx` end to end on a small Fashion-MNIST folder."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import pytest
import torch

from conformer_vision.data import ImageFolderDataset
from conformer_vision.evaluate import evaluate_dataset, format_eval_line
from conformer_vision.metrics import ClassificationMeter
from conformer_vision.runtime import open_predictor

SPEC_LINE = re.compile(r"^eval results: (\{'Loss': [0-9.]+, 'Top1-Acc': [0-9.]+, 'Top5-Acc': [0-9.]+\})$", re.M)


pytestmark = pytest.mark.usefixtures("one_thread")


def _eval_args(base: Path, *extra: str) -> list[str]:
    root = T.fashion_mnist(base)
    return [
        "eval",
        "--data_url",
        str(root),
        "--val_dir",
        "val",
        "--batch_size",
        "16",
        "--num_parallel_workers",
        "0",
        "--device_target",
        "cpu",
        *extra,
    ]


@pytest.mark.slow
def test_evaluate_dataset_is_the_training_meter_on_the_val_folder(base):
    """Same numbers as feeding the dataset through ClassificationMeter by hand (the predictor runs
    ``optimize_for_inference``'s copy: the loss agrees to float32 rounding, the counts exactly)."""
    model, classes, pre = T.trained_model(base)
    predictor = open_predictor(T.checkpoint(base))
    result = evaluate_dataset(predictor, T.fashion_mnist(base) / "val", batch_size=7)
    data = ImageFolderDataset(T.fashion_mnist(base) / "val", pre.eval_transform(), classes=classes)
    meter = ClassificationMeter(len(classes))
    with torch.inference_mode():
        x = torch.stack([data[i][0] for i in range(len(data))])
        meter.update(*model.forward_heads(x), torch.tensor(data.targets))
    expected = meter.summary()
    for key in ("Loss", "Top1-Acc", "Top5-Acc", "conv_top1", "trans_top5", "num_samples"):
        assert result[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6)
    assert (result["confusion"] == meter.confusion.numpy()).all()
    assert [r["samples"] for r in result["per_class"]] == [T.PER_CLASS] * 10
    assert result["per_class"][3]["name"] == classes[3] and 0.1 < result["Top5-Acc"] <= 1


def test_format_eval_line_is_the_specification_form():
    line = format_eval_line({"Loss": 1.42041234, "Top1-Acc": 0.7310664, "Top5-Acc": 0.90621})
    assert line == "eval results: {'Loss': 1.4204, 'Top1-Acc': 0.731066, 'Top5-Acc': 0.90621}"
    assert (
        format_eval_line({"Loss": 0, "Top1-Acc": 0.5, "Top5-Acc": 1.0}, with_loss=False)
        == "eval results: {'Top1-Acc': 0.5, 'Top5-Acc': 1.0}"
    )


@pytest.mark.slow
def test_eval_cli_checkpoint_and_onnx_agree(base, tmp_path):
    extra = ("--output", str(tmp_path / "m.json"), "--confusion_matrix", str(tmp_path / "cm.png"))
    rc, out, err = T.cli(*_eval_args(base, "--checkpoint", str(T.checkpoint(base)), *extra))
    assert rc == 0, err
    torch_metrics = ast.literal_eval(SPEC_LINE.search(out).group(1))
    assert re.search(r"^conv head: +top-1 [0-9.]+ +top-5 [0-9.]+", out, re.M)
    assert re.search(r"^trans head: +top-1", out, re.M) and "per-class top-1" in out and "ankle_boot" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["Top1-Acc"] == pytest.approx(torch_metrics["Top1-Acc"], abs=1e-6)
    assert len(saved["per_class"]) == 10 and "confusion" not in saved
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    onnx_path = str(T.onnx_export(base))
    rc, out_onnx, err = T.cli(*_eval_args(base, "--checkpoint", onnx_path))
    assert rc == 0, err
    onnx_metrics = ast.literal_eval(SPEC_LINE.search(out_onnx).group(1))
    rc, out_spec, err = T.cli(
        "eval-onnx",
        str(T.fashion_mnist(base) / "val"),
        "--onnx_path",
        onnx_path,
        "-m",
        "CPU",
        "--prefetch",
        "4",
        "--workers",
        "0",
    )
    assert rc == 0, err
    spec_metrics = ast.literal_eval(re.search(r"^eval results: (\{.*\})$", out_spec, re.M).group(1))
    for metrics in (onnx_metrics, spec_metrics):
        for key in ("Top1-Acc", "Top5-Acc", "Loss"):
            assert metrics[key] == pytest.approx(torch_metrics[key], abs=1e-3)  # within 0.1%
    # per-head results through ONNX too
    assert out_onnx.split("conv head:")[1].split("\n")[0] == out.split("conv head:")[1].split("\n")[0]


@pytest.mark.slow
def test_eval_use_ema_and_its_absence(base, tmp_path):
    rc, out, err = T.cli(*_eval_args(base, "--checkpoint", str(T.checkpoint(base)), "--use_ema", "true"))
    assert rc == 0, err  # EMA heads are zero: every image predicted as class 0, 1 in 10 right
    assert ast.literal_eval(SPEC_LINE.search(out).group(1))["Top1-Acc"] == pytest.approx(0.1)
    from conformer_vision.checkpoint import atomic_save, build_checkpoint

    model, classes, pre = T.trained_model(base)
    plain = atomic_save(build_checkpoint(model, class_names=classes, preprocess=pre.to_dict()), tmp_path / "p.pt")
    rc, _, err = T.cli(*_eval_args(base, "--checkpoint", str(plain), "--use_ema", "true"))
    assert rc == 2 and "no EMA weights" in err and "Traceback" not in err


@pytest.mark.slow
def test_eval_errors_are_clear(base, tmp_path):
    rc, _, err = T.cli(*_eval_args(base))
    assert rc == 2 and "--checkpoint" in err
    rc, _, err = T.cli(*_eval_args(base, "--checkpoint", str(tmp_path / "missing.pt")))
    assert rc == 2 and "no such file" in err
    rc, _, err = T.cli(*_eval_args(base, "--checkpoint", str(T.checkpoint(base)), "--val_dir", "nope"))
    assert rc == 2 and "does not exist" in err
    rc, _, err = T.cli("eval-onnx", str(T.fashion_mnist(base) / "val"), "--onnx_path", str(tmp_path / "x.onnx"))
    assert rc == 2 and "no such ONNX file" in err and "Traceback" not in err


def test_eval_onnx_gpu_without_cuda_provider_is_a_clear_error(tmp_path, monkeypatch):
    import onnxruntime
    from onnx import TensorProto, helper, save

    # A 3-class classifier (global average pool): the providers are checked before graph or data is read.
    pool = helper.make_node("GlobalAveragePool", ["input"], ["pooled"])
    nodes = [pool, helper.make_node("Flatten", ["pooled"], ["logits"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "pool", inputs, outputs)
    model = tmp_path / "pool.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    rc, _, err = T.cli("eval-onnx", str(tmp_path), "--onnx_path", str(model), "-m", "GPU")
    assert rc == 2 and "CUDAExecutionProvider" in err and "-m CPU" in err
