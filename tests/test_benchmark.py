"""``conformer benchmark`` end to end on the mini variant (no timing assertions: figures only), and
what it times: the ``runtime`` predictors that predict and eval run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conformer_vision import benchmark
from conformer_vision.benchmark import BenchmarkSpec, count_gflops
from conformer_vision.cli import main
from conformer_vision.models import create_model
from conformer_vision.probes import CPU_FLAGS, cpu_info, gemm_peak
from conformer_vision.runtime import OnnxPredictor, TorchPredictor

SMALL = [
    "--arch",
    "conformer_mini_test",
    "--image_size",
    "32",
    "--batch_size",
    "2",
    "--num_classes",
    "10",
    "--warmup",
    "1",
    "--runs",
    "1",
    "--threads",
    "1",
]
FIELDS = [
    "images/s",
    "latency/batch",
    "peak memory",
    "parameters",
    "GFLOPs/image",
    "torch.utils.flop_counter",
    "of the GEMM peak",
    "cpu             ",
]


@pytest.mark.slow
def test_inference_backends_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "bench.json"
    code = main(
        [
            "benchmark",
            *SMALL,
            "--compare",
            "reference,eager,onnxruntime,onnx_int8,onnx_int8_static",
            "--agreement",
            "10",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    for field in FIELDS + [
        "| reference | infer |",
        "| eager fp32 |",
        "| onnxruntime tuned |",
        "| onnxruntime int8 |",
        "| onnxruntime int8_static |",
        "ONNX export",
        "int8_static quantisation",
        "top-1 agreement",
        "onnxruntime MatMulInteger",
    ]:
        assert field in text, field
    results = json.loads(out.read_text())
    params = sum(p.numel() for p in create_model("conformer_mini_test", num_classes=10).parameters())
    assert [r["label"] for r in results] == [
        "reference",
        "eager fp32",
        "onnxruntime tuned",
        "onnxruntime int8",
        "onnxruntime int8_static",
    ]
    assert results[4]["extra"]["calibration_images"] == 64
    for r in results:
        assert r["images_per_s"] > 0 and r["params"] == params
        assert set(r["cpu"]["flags"]) in (set(CPU_FLAGS), set()) and r["cpu"]["threads"] == 1
        assert r["flop_counter"] == "torch.utils.flop_counter" and 0 < r["peak_fraction"]
        assert r["extra"]["images"] == 10 and 0 <= r["extra"]["top1_agreement"] <= 1
    assert results[0]["extra"]["top1_agreement"] == 1.0
    assert results[1]["extra"]["top1_agreement"] == 1.0  # the model gives the reference network's answer


@pytest.mark.slow
def test_train_mode(capsys: pytest.CaptureFixture[str]):
    assert main(["benchmark", *SMALL, "--mode", "train"]) == 0
    text = capsys.readouterr().out
    for field in FIELDS + ["| train | eager fp32 |", "forward + backward"]:
        assert field in text, field


@pytest.mark.slow
def test_reference_network_single(capsys: pytest.CaptureFixture[str]):
    assert main(["benchmark", *SMALL, "--network", "reference"]) == 0
    assert "| infer | reference |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "onnxruntime", "--mode", "train"], "inference only"),
        (["--compare", "eager,onnx_plian"], "did you mean 'onnx_plain'"),
        (["--network", "reference", "--amp", "bf16"], "the reference network is plain eager float32"),
        (["--network", "optimized", "--mode", "train"], "optimize_for_inference makes an inference copy"),
        (["--agreement", "4"], "--agreement needs --compare"),
    ],
)
def test_bad_options_are_clear_errors(args, message, capsys: pytest.CaptureFixture[str]):
    assert main(["benchmark", *SMALL, *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cost_model():
    params, gflops = count_gflops(BenchmarkSpec(arch="conformer_tiny_patch16", batch_size=1))
    assert params == 23_524_704 and abs(gflops - 10.45) < 0.01  # 5.2 GMACs, the reference's count
    _, train = count_gflops(BenchmarkSpec(arch="conformer_tiny_patch16", batch_size=1, mode="train"))
    assert 2.9 * gflops < train < 3.1 * gflops
    for kind in ("fp32", "ort_fp32", "ort_int8"):
        value, label = gemm_peak(kind, n=128, reps=1)
        assert value > 0 and "128^3" in label


def _attention_flags(model: nn.Module) -> set[bool]:
    return {m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}


@pytest.mark.slow
def test_inference_times_the_predictors_predict_runs(tmp_path: Path):
    """'reference' = the model with the authors' explicit attention, 'eager' = the model as built,
    'optimized' (and the autocast presets) = optimize_for_inference's copy as predict runs it, each a
    TorchPredictor; the ONNX graphs run in OnnxPredictor sessions. All give the model's answer."""
    base = BenchmarkSpec(arch="conformer_mini_test", batch_size=2, image_size=32, num_classes=10)
    specs = benchmark.parse_preset(base, ["reference", "eager", "optimized", "bf16", "onnx_plain", "onnxruntime"])
    models: dict[str, nn.Module] = {}
    runners = [benchmark._build(spec, models, tmp_path, {}) for spec in specs]
    reference, eager, optimized, bf16, plain, ours = (r.predictor for r in runners)
    for p in (reference, eager, optimized, bf16):
        assert isinstance(p, TorchPredictor)
    assert isinstance(plain, OnnxPredictor) and isinstance(ours, OnnxPredictor)
    assert _attention_flags(reference.model) == {False} and _attention_flags(eager.model) == {True}
    has_bn = [any(isinstance(m, nn.BatchNorm2d) for m in p.model.modules()) for p in (eager, optimized, bf16)]
    assert has_bn == [True, False, False]  # BatchNorm folded into the convolutions of the optimized copy
    assert (optimized.channels_last, bf16.channels_last, bf16.amp_dtype) == (True, True, torch.bfloat16)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = reference.fused(x)
    scale = float(want.abs().max())
    for p in (eager, optimized, plain, ours):
        assert float((p.fused(x) - want).abs().max()) <= 1e-4 * scale
    with torch.no_grad():
        assert torch.allclose(want, models["conformer_mini_test-10-None"].eval()(x), rtol=1e-4, atol=1e-4 * scale)


def test_cpu_info_names_the_model_and_the_flags():
    info = cpu_info()
    assert info["model"] and info["threads"] == torch.get_num_threads() and info["cores"] >= 1
    assert set(info["flags"]) in (set(CPU_FLAGS), set())
