"""``conformer benchmark`` end to end on the mini variant (no timing assertions: figures only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformer_vision.benchmark import BenchmarkSpec, count_gflops, gemm_peak
from conformer_vision.cli import main
from conformer_vision.models import create_model

SMALL = ["--arch", "conformer_mini_test", "--image_size", "32", "--batch_size", "2", "--num_classes", "10",
         "--warmup", "1", "--runs", "1", "--threads", "1"]  # fmt: skip
FIELDS = ["images/s", "latency/batch", "peak memory", "parameters", "GFLOPs/image", "torch.utils.flop_counter",
          "of the GEMM peak"]  # fmt: skip


def test_inference_backends_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "bench.json"
    code = main(["benchmark", *SMALL, "--compare", "reference,eager,onnxruntime,onnx_int8,onnx_int8_static",
                 "--agreement", "10", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    for field in FIELDS + ["| reference | infer |", "| eager fp32 |", "| onnxruntime tuned |", "| onnxruntime int8 |",
                           "| onnxruntime int8_static |", "ONNX export", "int8_static quantisation", "top-1 agreement",
                           "onnxruntime MatMulInteger"]:  # fmt: skip
        assert field in text, field
    results = json.loads(out.read_text())
    params = sum(p.numel() for p in create_model("conformer_mini_test", num_classes=10).parameters())
    assert [r["label"] for r in results] == ["reference", "eager fp32", "onnxruntime tuned", "onnxruntime int8",
                                             "onnxruntime int8_static"]  # fmt: skip
    assert results[4]["extra"]["calibration_images"] == 64
    for r in results:
        assert r["images_per_s"] > 0 and r["params"] == params
        assert r["flop_counter"] == "torch.utils.flop_counter" and 0 < r["peak_fraction"]
        assert r["extra"]["images"] == 10 and 0 <= r["extra"]["top1_agreement"] <= 1
    assert results[0]["extra"]["top1_agreement"] == 1.0
    assert results[1]["extra"]["top1_agreement"] == 1.0  # the model gives the reference network's answer


def test_train_mode(capsys: pytest.CaptureFixture[str]):
    assert main(["benchmark", *SMALL, "--mode", "train"]) == 0
    text = capsys.readouterr().out
    for field in FIELDS + ["| train | eager fp32 |", "forward + backward"]:
        assert field in text, field


def test_reference_network_single(capsys: pytest.CaptureFixture[str]):
    assert main(["benchmark", *SMALL, "--network", "reference"]) == 0
    assert "| infer | reference |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "onnxruntime", "--mode", "train"], "inference only"),
        (["--compare", "eager,onnx_plian"], "Did you mean 'onnx_plain'"),
        (["--network", "reference", "--amp", "bf16"], "the reference network is plain eager float32"),
        (["--network", "optimized", "--mode", "train"], "optimize_for_inference makes an inference copy"),
        (["--agreement", "4"], "--agreement needs --compare"),
    ],
)
def test_bad_options_are_clear_errors(args, message, capsys: pytest.CaptureFixture[str]):
    assert main(["benchmark", *SMALL, *args]) == 2
    assert message in capsys.readouterr().err


def test_cost_model():
    params, gflops = count_gflops(BenchmarkSpec(arch="conformer_tiny_patch16", batch_size=1))
    assert params == 23_524_704 and abs(gflops - 10.45) < 0.01  # 5.2 GMACs, the reference's count
    _, train = count_gflops(BenchmarkSpec(arch="conformer_tiny_patch16", batch_size=1, mode="train"))
    assert 2.9 * gflops < train < 3.1 * gflops
    for kind in ("fp32", "ort_fp32"):
        value, label = gemm_peak(kind, n=128, reps=1)
        assert value > 0 and "128^3" in label
