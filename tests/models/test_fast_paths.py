"""The inference fast paths give the reference answer and leave the state dict and training alone."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conformer_vision.models import create_model, layers
from conformer_vision.models.layers import fold_batchnorm, fused_conv


def _random_bn(module: nn.Module, seed: int = 0) -> None:
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
    model = create_model("conformer_mini_test", num_classes=num_classes)
    _random_bn(model)
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _has_cache(model: nn.Module) -> bool:
    return any("_folded_cache" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_fold_batchnorm_equals_conv_then_bn(bias, stride):
    conv, bn = nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(16, eps=1e-6)
    _random_bn(bn)
    bn.eval()
    x = torch.randn(2, 8, 12, 12)
    weight, b = fold_batchnorm(conv, bn)
    with torch.no_grad():
        assert _rel(F.conv2d(x, weight, b, stride, 1), bn(conv(x))) <= 1e-5


@pytest.mark.parametrize("mkldnn", [True, False], ids=["onednn_fused", "portable"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_conv_matches_modules(monkeypatch, mkldnn, channels_last):
    if not mkldnn:
        monkeypatch.setattr(layers, "_MKLDNN_FUSION", False)
    conv, bn = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, eps=1e-6)
    _random_bn(bn)
    bn.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=fmt)
    residual = torch.randn(2, 16, 10, 10).contiguous(memory_format=fmt)
    with torch.inference_mode():
        assert _rel(fused_conv(conv, x, bn, relu=True), F.relu(bn(conv(x)))) <= 1e-5
        assert _rel(fused_conv(conv, x, bn, relu=True, residual=residual), F.relu(bn(conv(x)) + residual)) <= 1e-5
        assert _rel(fused_conv(conv, x), conv(x)) <= 1e-6


@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad"])
def test_default_mode_matches_reference_mode(grad_mode):
    model = _mini()
    ref = copy.deepcopy(model)
    ref.set_reference_mode(True)
    assert ref.reference_mode and not model.reference_mode
    x = torch.randn(2, 3, 96, 64)
    ctx = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad
    with ctx():
        conv, trans = model.forward_heads(x)
        want_conv, want_trans = ref.forward_heads(x)
    assert _has_cache(model) and not _has_cache(ref)  # the fast path really ran, the reference did not
    assert _rel(conv, want_conv) <= 1e-5 and _rel(trans, want_trans) <= 1e-5


def test_state_dict_untouched_by_inference():
    model = _mini()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(v.is_contiguous() for v in after.values())  # channels_last is for activations only


def test_training_is_unchanged_and_clears_the_cache():
    model = _mini()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert _has_cache(model)
    ref = copy.deepcopy(model)
    ref.set_reference_mode(True)
    model.train(), ref.train()
    assert not _has_cache(model)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    losses, grads = [], []
    for m in (model, ref):
        conv, trans = m.forward_heads(x)
        loss = (F.cross_entropy(conv, y) + F.cross_entropy(trans, y)) / 2
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    top = max(float(g.abs().max()) for g in grads[1].values())
    for name, g in grads[1].items():  # through 12 blocks of batch-statistics BatchNorm on 2 images
        assert float((grads[0][name] - g).abs().max()) <= 1e-3 * float(g.abs().max()) + 1e-6 * top, name
    for (name, a), b in zip(model.named_buffers(), ref.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name  # BatchNorm statistics updated alike


def test_folded_weights_follow_parameter_updates():
    model, other = _mini(), _mini()
    _random_bn(other, seed=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        first = model(x)
    model.load_state_dict(other.state_dict())  # in-place copies: the cached folds must be recomputed
    ref = copy.deepcopy(other)
    ref.set_reference_mode(True)
    with torch.inference_mode():
        assert _rel(model(x), ref(x)) <= 1e-5 and _rel(first, ref(x)) > 1e-3


def test_hooks_tracers_and_flop_counter_see_plain_modules():
    model = _mini()
    seen = []
    handle = model.conv_trans_2.cnn_block.bn1.register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert seen
    bn = model.conv_trans_2.cnn_block.bn2
    bn.train()  # a BatchNorm left in training mode inside an eval model keeps its batch statistics
    before = bn.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)
    bn.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the padding branch
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
    assert "_convolution_pointwise" not in str(traced.inlined_graph)
    counts = []
    for training in (False, True):  # the eval fast path must not hide convolutions from the counter
        model.train(training)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
        counts.append(counter.get_flop_counts()["Global"][torch.ops.aten.convolution])
    assert counts[0] == counts[1] > 0


def test_bf16_autocast_uses_the_folded_path_and_agrees():
    model = _mini()
    ref = copy.deepcopy(model)
    ref.set_reference_mode(True)
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, plain = model(x).float(), ref(x).float()
    assert _rel(fast, plain) < 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: one thread avoids OpenMP barrier stalls on a shared, oversubscribed CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_model_built_under_inference_mode_runs_the_fast_path():
    with torch.inference_mode():
        model = create_model("conformer_mini_test", num_classes=3).eval()
        ref = copy.deepcopy(model)
        ref.set_reference_mode(True)
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
        other = _mini(num_classes=3)  # in-place updates of inference tensors leave no version trace
        model.load_state_dict(other.state_dict())
        ref.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
