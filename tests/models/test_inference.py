"""``optimize_for_inference``: an eval-mode copy with BatchNorm folded, FCUDown pooling first,
fused attention and channels_last weights, equal to the model to float32 rounding; the model's
own forward is the reference network's, with no second path (the reference vector covers both in
test_conformer.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import conformer_vision
from conformer_vision.models import create_model, optimize_for_inference
from conformer_vision.models.layers import Attention

SRC = Path(conformer_vision.__file__).parent


def _random_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _mini(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("conformer_mini_test", num_classes=num_classes, fused_attn=False)
    _random_batchnorm(model)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("size", [(64, 64), (96, 128), (50, 70)])
def test_the_copy_gives_the_models_outputs(size):
    model = _mini().eval()
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        for got, want in zip(fast.forward_heads(x), model.forward_heads(x)):
            assert _rel(got, want) <= 1e-5
        assert _rel(fast(x), model(x)) <= 1e-5
        assert _rel(fast.forward_features(x), model.forward_features(x)) <= 1e-5


def test_what_the_copy_is_made_of():
    model = _mini().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    # the input model is untouched: training mode, BatchNorms, weights, layout, explicit attention
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 85
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.conv1.weight.is_contiguous() and not any(
        m.fused_attn for m in model.modules() if isinstance(m, Attention)
    )
    # the copy: eval, no BatchNorm, pool-then-conv FCUDowns, fused attention, channels_last, frozen
    assert not fast.training and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert isinstance(fast.conv_trans_2.squeeze_block.sample_pooling, nn.Sequential)
    assert isinstance(fast.conv_trans_2.squeeze_block.conv_project, nn.Identity)
    assert all(m.fused_attn for m in fast.modules() if isinstance(m, Attention))
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last) and fast.conv1.bias is not None
    assert not any(p.requires_grad for p in fast.parameters())
    nchw = optimize_for_inference(model, channels_last=False)
    assert nchw.conv1.weight.is_contiguous()
    again = optimize_for_inference(fast)  # already optimised: nothing left to rewrite
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), fast(x))


@pytest.mark.slow
def test_the_copy_runs_fewer_flops_and_no_batchnorm():
    model = _mini().eval()
    fast = optimize_for_inference(model)
    counts = []
    for m in (model, fast):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(torch.randn(1, 3, 224, 224))
        counts.append(counter.get_flop_counts()["Global"])
    assert torch.ops.aten.native_batch_norm not in counts[1]
    convolutions = [c[torch.ops.aten.convolution] for c in counts]
    assert convolutions[1] < convolutions[0]  # FCUDown's 1x1 convolution on the pooled map


def test_bf16_autocast_of_the_copy_agrees():
    model = _mini().eval()
    fast = optimize_for_inference(model)
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        want = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x).float()
    assert _rel(got, want) < 0.1 and got.dtype == torch.float32


def test_features_only_models_are_optimised_too():
    torch.manual_seed(0)
    features = timm.create_model("conformer_mini_test", features_only=True, out_indices=(0, 3, 4)).eval()
    _random_batchnorm(features)
    fast = optimize_for_inference(features)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(fast(x), features(x)):
            assert _rel(got, want) <= 1e-5


def test_no_private_pytorch_api_in_the_model_and_inference_code():
    """The model code, the predictor and the benchmark use public PyTorch APIs only (no
    ``torch._*`` modules, ``torch.ops.mkldnn``, private dispatch modes or module-hook globals)."""
    private = re.compile(r"torch\._[a-z]|torch\.ops\.mkldnn|_python_dispatch|_global_forward_hooks")
    files = [*sorted((SRC / "models").glob("*.py")), SRC / "runtime.py", SRC / "benchmark.py"]
    hits = [
        f"{f.name}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1) if private.search(line)
    ]
    assert not hits
