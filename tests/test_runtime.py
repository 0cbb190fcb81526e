"""runtime: one predictor over a torch module or an onnxruntime session, opened from any model file."""

from __future__ import annotations

import json
from pathlib import Path

import inference_testlib as T  # tests/inference_testlib.py (pytest pythonpath: tests)
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conformer_vision.data import Preprocess, load_rgb, preprocess_image
from conformer_vision.errors import CheckpointError, ConfigError, ConformerError
from conformer_vision.models import create_model
from conformer_vision.runtime import (
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    default_preprocess,
    onnx_providers,
    open_predictor,
    resolve_device,
)


@pytest.mark.slow
def test_torch_predictor_from_checkpoint_carries_classes_and_preprocessing(base):
    ckpt = T.checkpoint(base)
    model, classes, pre = T.trained_model(base)
    p = open_predictor(ckpt)
    assert isinstance(p, TorchPredictor) and isinstance(p, Predictor)
    assert p.class_names == classes and p.preprocess == pre and p.arch == "conformer_mini_test"
    x = torch.randn(3, 3, 32, 32)
    conv, trans = p.heads(x.numpy())  # numpy in, CPU tensors out
    assert conv.shape == trans.shape == (3, 10) and conv.dtype == torch.float32
    ref_conv, ref_trans = model.forward_heads(x)
    torch.testing.assert_close(conv, ref_conv.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p.fused(x), conv + trans)


@pytest.mark.slow
def test_use_ema_selects_the_ema_weights(base):
    p = open_predictor(T.checkpoint(base), use_ema=True)
    conv, trans = p.heads(torch.randn(2, 3, 32, 32))
    assert conv.abs().max() == 0 and trans.abs().max() == 0  # the EMA slot has zeroed heads


@pytest.mark.slow
def test_foreign_state_dict_needs_arch_then_uses_variant_defaults(tmp_path):
    model = create_model("conformer_mini_test", num_classes=7)
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="--arch"):
        open_predictor(path)
    with pytest.raises(ConfigError, match="unknown Conformer variant"):
        open_predictor(path, arch="conformer_tinyy")
    p = open_predictor(path, arch="conformer_mini_test")
    assert p.class_names is None and p.fused(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert p.preprocess == Preprocess()  # 224, bicubic, crop 0.875, ImageNet mean/std
    assert default_preprocess(model, image_size=(96, 128)).input_size == (96, 128)


def test_missing_and_garbage_model_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        open_predictor(tmp_path / "nope.pt")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        open_predictor(bad)


def test_gpu_without_cuda_is_a_clear_error(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConformerError, match="onnxruntime-gpu"):
        onnx_providers("GPU")
    assert onnx_providers("CPU") == ["CPUExecutionProvider"]
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError):
        onnx_providers("TPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def _foreign_onnx(path: Path, classes: int = 4) -> Path:
    """A one-output graph with no metadata (like an ONNX file from another tool): GAP -> MatMul."""
    w = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["out"]),
        ],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", classes])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_foreign_single_output_onnx_runs_with_default_preprocessing(tmp_path):
    p = OnnxPredictor(_foreign_onnx(tmp_path / "f.onnx"), "CPU")
    assert not p.has_heads and p.class_names is None and p.preprocess == Preprocess()
    x = torch.rand(2, 3, 10, 12)
    expected = x.mean(dim=(2, 3)) @ (torch.arange(12.0).reshape(3, 4) / 10)
    torch.testing.assert_close(p.fused(x), expected, rtol=1e-5, atol=1e-6)
    p2 = open_predictor(tmp_path / "f.onnx", image_size=(40, 60))
    assert p2.preprocess.input_size == (40, 60)
    with pytest.raises(ConfigError, match="use_ema"):
        open_predictor(tmp_path / "f.onnx", use_ema=True)


@pytest.mark.slow
def test_onnx_predictor_reads_metadata_and_matches_torch_on_photos(base):
    """The exported file describes itself like the checkpoint, and both predictors decode and
    preprocess with the same functions (load_rgb + Preprocess.eval_transform)."""
    torch_p, onnx_p = open_predictor(T.checkpoint(base)), open_predictor(T.onnx_export(base))
    assert isinstance(onnx_p, OnnxPredictor) and onnx_p.has_heads
    assert onnx_p.class_names == torch_p.class_names and onnx_p.preprocess == torch_p.preprocess
    assert onnx_p.arch == "conformer_mini_test"
    meta = onnx.load(str(T.onnx_export(base)), load_external_data=False).metadata_props
    props = {p.key: json.loads(p.value) for p in meta}
    assert props["preprocess"] == torch_p.preprocess.to_dict() and props["outputs"][0] == "logits"
    images = [load_rgb(p) for p in sorted(T.photos(base).iterdir())]
    batch = torch.stack([preprocess_image(im, torch_p.preprocess) for im in images])
    ref, got = torch_p.fused(batch), onnx_p.fused(batch)
    assert torch.equal(ref.argmax(1), got.argmax(1))
    assert (ref - got).abs().max() <= 1e-4 * ref.abs().max()
