"""The model against the reference network: outputs, layout, parameter counts, API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import conformer_vision
from conformer_vision.models import ConformerArgs, create_model, list_models, optimize_for_inference
from conformer_vision.models.convert import load_state_dict_strict

FIXTURES = Path(__file__).parents[1] / "fixtures"

FULL_VARIANTS = [
    "conformer_tiny_patch16",
    "conformer_small_patch16",
    "conformer_small_patch32",
    "conformer_base_patch16",
]


def _mini_from_vector(vector: dict, **kw) -> torch.nn.Module:
    cfg = dict(vector["config"])
    num_classes = cfg.pop("num_classes")
    assert ConformerArgs(**cfg, num_classes=num_classes) == create_model("conformer_mini_test", num_classes).args
    model = create_model("conformer_mini_test", num_classes=num_classes, **kw).eval()
    load_state_dict_strict(model, vector["state_dict"])
    return model


@pytest.mark.parametrize("network", ["fused_attn", "explicit_attn", "channels_last", "optimize_for_inference"])
def test_matches_reference_vector(reference_vector, network):
    """``model(x)`` (fused or the reference's explicit attention, NCHW or channels_last) and
    ``optimize_for_inference(model)(x)`` give the reference network's outputs."""
    model = _mini_from_vector(reference_vector, fused_attn=network != "explicit_attn")
    channels_last = network == "channels_last"  # the optimised copy takes NCHW inputs as they come
    if network == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if network == "optimize_for_inference":
        model = optimize_for_inference(model)
    for name, x in reference_vector["inputs"].items():
        want = reference_vector["outputs"][name]
        scale = max(want["conv_logits"].abs().max(), want["trans_logits"].abs().max()).item()
        x = x.float()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            conv, trans = model.forward_heads(x)
            fused_out = model(x)
        tol = 1e-5 * scale
        assert (conv - want["conv_logits"]).abs().max() <= tol
        assert (trans - want["trans_logits"]).abs().max() <= tol
        assert (fused_out - want["conv_logits"] - want["trans_logits"]).abs().max() <= tol


@pytest.mark.slow
def test_state_dict_layout_and_param_counts():
    layout = json.loads((FIXTURES / "reference_state_dict_layout.json").read_text())
    assert set(layout) <= set(list_models())
    for name in FULL_VARIANTS:
        with torch.device("meta"):
            model = create_model(name)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == layout[name]["state_dict"], name
        assert sum(p.numel() for p in model.parameters()) == layout[name]["num_params"], name


@pytest.mark.slow
def test_public_counts_match_reference_md():
    counts = {
        "conformer_tiny_patch16": 23_524_704,
        "conformer_small_patch16": 37_673_424,
        "conformer_small_patch32": 38_853_072,
        "conformer_base_patch16": 83_289_136,
    }
    for name, n in counts.items():
        with torch.device("meta"):
            assert sum(p.numel() for p in create_model(name).parameters()) == n
    with torch.device("meta"):  # the MindSpore README's count: tiny with 196 classes
        assert sum(p.numel() for p in create_model("conformer_tiny", num_classes=196).parameters()) == 23_008_536


def test_timm_registry_and_aliases():
    assert {"conformer_tiny_patch16", "conformer_base_patch16"} <= set(timm.list_models("conformer*"))
    model = timm.create_model("conformer_mini_test", num_classes=7, drop_path_rate=0.1)
    assert isinstance(model, conformer_vision.Conformer)
    assert model.args.num_classes == 7 and model.args.drop_path_rate == 0.1
    assert create_model("conformer_tiny", num_classes=3, device="meta").args.channel_ratio == 1
    with pytest.raises(ValueError, match="did you mean"):
        create_model("conformer_tiny_patch61")
    with pytest.raises(TypeError, match="unknown model option"):
        create_model("conformer_mini_test", dropout=0.1)


def test_forward_returns_one_tensor_in_train_and_eval():
    model = create_model("conformer_mini_test", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    for mode in (True, False):
        model.train(mode)
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    model.eval()
    with torch.no_grad():
        conv, trans = model.forward_heads(x)
        torch.testing.assert_close(model(x), conv + trans)
        feats = model.forward_features(x)  # (B, C + D, H/32, W/32): CNN map and class token
        assert feats.shape == (2, 64 + 32, 2, 2) and model.num_features == model.head_hidden_size == 96
        cnn, cls = model.split_features(feats)
        assert cnn.shape == (2, 64, 2, 2) and cls.shape == (2, 32)
        assert torch.equal(feats[:, 64:], cls[:, :, None, None].expand(-1, -1, 2, 2))
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, torch.cat([cnn.mean((2, 3)), cls], 1))
        torch.testing.assert_close(model.conv_cls_head(pre[:, :64]), conv)
        torch.testing.assert_close(model.trans_cls_head(pre[:, 64:]), trans)


@pytest.mark.parametrize("size", [(241, 241), (100, 60), (33, 47), (16, 16)])
def test_any_input_size_runs(size):
    model = create_model("conformer_mini_test", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 4)


def test_patch32_needs_multiples_of_32_and_pads_otherwise():
    model = create_model("conformer_small_patch32", num_classes=2, channel_ratio=0.25, embed_dim=32, num_heads=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 80)).shape == (1, 2)
        assert model.pad_input(torch.zeros(1, 3, 96, 80)).shape[-2:] == (96, 96)


def test_padding_is_identity_on_multiples(reference_vector):
    model = _mini_from_vector(reference_vector)
    x = reference_vector["inputs"]["x_96x128"].float()
    assert model.pad_input(x) is x


def test_every_parameter_gets_a_gradient():
    model = create_model("conformer_mini_test", num_classes=3, drop_path_rate=0.1, drop_rate=0.1, attn_drop_rate=0.1)
    model.train()
    conv, trans = model.forward_heads(torch.randn(2, 3, 64, 64))
    (conv.sum() + trans.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_reset_classifier_and_no_weight_decay():
    model = create_model("conformer_mini_test", num_classes=3).eval()
    model.reset_classifier(11)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 11)
    assert model.args.num_classes == 11
    assert model.no_weight_decay() == {"cls_token"}


def test_mindspore_numerics_switches_change_the_answer_slightly(reference_vector):
    x = reference_vector["inputs"]["x224"].float()
    ref = _mini_from_vector(reference_vector)
    ms = _mini_from_vector(reference_vector, approximate_gelu=True, same_pad_maxpool=True)
    assert isinstance(ms.maxpool, torch.nn.Module) and not isinstance(ms.maxpool, torch.nn.MaxPool2d)
    with torch.no_grad():
        a, b = ref(x), ms(x)
    assert a.shape == b.shape and not torch.equal(a, b)
    assert ms.conv_trans_2.trans_block.mlp.act.approximate == "tanh"


def test_same_pad_maxpool_matches_tf_semantics():
    from conformer_vision.models.layers import SamePadMaxPool2d

    pool = SamePadMaxPool2d(3, 2)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF "same" on 4x4, k3 s2: pads one row/column at the bottom/right only.
    assert pool(x).flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    assert pool(torch.zeros(1, 1, 7, 9)).shape[-2:] == (4, 5)


def test_same_pad_maxpool_padding_is_recorded_by_the_tracer():
    """The padding is shape arithmetic a tracer records (issue 11, point 7): the TF formula for
    every size, and a pool traced at one size pads every other size as the eager module does."""
    import math
    import warnings

    from conformer_vision.models.layers import SamePadMaxPool2d

    for k in range(1, 6):
        for s in range(1, 4):
            pool = SamePadMaxPool2d(k, s)
            for n in range(1, 41):
                total = max((math.ceil(n / s) - 1) * s + k - n, 0)  # TensorFlow's definition
                assert pool._pad(n) == (total // 2, total - total // 2), (n, k, s)
    pool = SamePadMaxPool2d(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        traced = torch.jit.trace(pool, torch.randn(1, 2, 10, 12))
    for size in ((7, 9), (8, 8), (5, 6), (33, 47)):
        x = torch.randn(1, 2, *size)
        assert torch.equal(traced(x), pool(x)), size
