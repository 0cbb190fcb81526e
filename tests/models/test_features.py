"""Feature pyramids: timm's ``features_only`` models and ``forward_intermediates`` of every variant,
the authors' four FPN maps by default, the transformer's patch tokens on request, pretrained
classification weights loaded into the feature model. Where timm runs its intermediate-feature
checks only for its own model families, the same checks are applied here."""

from __future__ import annotations

import copy
import math
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

import conformer_vision  # noqa: F401  (registers the variants in timm)
from conformer_vision.checkpoint import build_checkpoint
from conformer_vision.models import create_model, default_out_indices

MINI = "conformer_mini_test"  # channels 16 / 32 / 64, embed 32, depth 12


def _mini(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MINI, **kwargs)


def test_default_features_are_the_authors_fpn_maps():
    model = _mini(features_only=True).eval()
    info = model.feature_info
    assert info.module_name() == ["conv_trans_4", "conv_trans_8", "conv_trans_11", "conv_trans_12"]
    assert info.reduction() == [4, 8, 16, 32] and info.channels() == [16, 32, 64, 64]
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 64, 2, 3)]
    assert default_out_indices(12) == (0, 1, 2, 4) and default_out_indices(6) == (0, 1, 2, 4)
    assert default_out_indices(3) == (0, 1, 3)  # depth 3 has no stride-16 block output


@pytest.mark.slow
def test_full_size_variants_describe_their_pyramids():
    for name, chans in [
        ("conformer_tiny_patch16", [64, 128, 256, 256]),
        ("conformer_base_patch16", [384, 768, 1536, 1536]),
    ]:
        model = timm.create_model(name, features_only=True, device="meta")
        assert model.feature_info.channels() == chans and model.feature_info.reduction() == [4, 8, 16, 32]
        assert all(p.device.type == "meta" for p in model.parameters())
    tokens = timm.create_model("conformer_small_patch32", features_only=True, out_indices=(3,), device="meta")
    assert tokens.feature_info.channels() == [384] and tokens.feature_info.reduction() == [32]


@pytest.mark.parametrize("size", [(64, 64), (100, 60), (33, 47)])
def test_patch_tokens_as_a_map_and_any_input_size(size):
    """Index -2 adds the last block's patch tokens (NCHW at the patch stride); sizes that are not
    multiples of the patch size give the maps of the zero-padded input."""
    model = _mini(features_only=True, out_indices=(0, 1, 2, -2, -1)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 16, 32]
    assert model.feature_info.module_name()[3] == "conv_trans_12.trans_block"
    padded = [math.ceil(s / 16) * 16 for s in size]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        maps = model(x)
        tokens = model.model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
    for m, r, c in zip(maps, model.feature_info.reduction(), model.feature_info.channels()):
        assert m.shape == (1, c, math.ceil(padded[0] / r), math.ceil(padded[1] / r))
    assert torch.isfinite(maps[3]).all()
    # norm=True: the final LayerNorm over each token's channels
    torch.testing.assert_close(tokens, model.model.trans_norm(maps[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_maps_are_the_blocks_outputs():
    """The maps are the CNN outputs of the named blocks and the tokens after the last block, read
    with forward hooks on the classification model."""
    model = _mini().eval()
    seen = {}
    for name in ("conv_trans_4", "conv_trans_8", "conv_trans_11", "conv_trans_12"):
        getattr(model, name).register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[0, 1, 2, 3, 4])
        torch.testing.assert_close(final, model.forward_features(x))
    for m, name in zip([maps[i] for i in (0, 1, 2, 4)], seen):
        assert torch.equal(m, seen[name][0]), name
    tokens = seen["conv_trans_12"][1][:, 1:]  # (B, N, D) without the class token
    assert torch.equal(maps[3], tokens.transpose(1, 2).reshape(2, 32, 4, 4))


@pytest.mark.parametrize("name", conformer_vision.list_models())
def test_forward_intermediates_checks_of_timm(name):
    """timm's test_model_forward_intermediates(_features) for its own families, on ours (a narrower
    small-patch32-like network for the big variants: the same code paths, seconds instead of minutes)."""
    small = {} if name == MINI else dict(channel_ratio=0.25, embed_dim=32, num_heads=2)
    torch.manual_seed(0)
    model = timm.create_model(name, **small).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(intermediates) == len(info.channels())
        for c, r, o in zip(info.channels(), info.reduction(), intermediates):
            assert o.shape[1] == c and o.shape[0] == 1 and not torch.isnan(o).any()
            assert o.shape[2] <= math.ceil(96 / r) + 1 and o.shape[3] <= math.ceil(96 / r) + 1
        torch.testing.assert_close(output, model.forward_features(x), rtol=1e-5, atol=1e-8)
        model.set_grad_checkpointing()
        again, _ = model.forward_intermediates(x, output_fmt="NCHW")
        torch.testing.assert_close(output, again, rtol=1e-4, atol=1e-5)
        getter = timm.create_model(name, features_only=True, feature_cls="getter", **small).eval()
        assert len(getter(x)) == len(getter.feature_info.channels()) == 4
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(IndexError, match="out of range"):
        model.forward_intermediates(x, indices=[7])


@pytest.mark.slow
def test_prune_and_stop_early_keep_the_taps():
    """timm's test_prune_intermediate_layers_contract, on ours: stop_early and pruned taps equal the
    full model's, pruning with the head kept at the last index changes nothing, and a pruned model
    trains with every remaining parameter used."""
    model = _mini(drop_rate=0.0).eval()
    x = torch.randn(2, 3, 64, 64)
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(kept(x), expected)
    for i in range(last + 1):
        with torch.no_grad():
            early = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], taps[i])
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i])
        with torch.no_grad():
            torch.testing.assert_close(
                pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0], taps[i]
            )
        pruned.train()
        out = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
        sum(f.sum() for f in out + [pruned.forward_features(x)]).backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None], i
        block = model.feature_info[i]["block"]
        assert not any(hasattr(pruned, f"conv_trans_{b}") for b in range(block + 1, 13))
        assert pruned.num_classes == 0 and pruned(x).dim() == 4  # heads pruned: the unpooled features


def test_features_only_with_grad_checkpointing_gives_the_same_gradients():
    """As timm's test_features_only_grad_checkpointing_backward: detection trains feature models
    with checkpointing (timm's getter wrapper holds the Conformer as ``.model``)."""
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enabled in (False, True):
        model = _mini(features_only=True).train()
        model.model.set_grad_checkpointing(enabled)
        sum(f.pow(2).mean() for f in model(x)).backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)


def _to_mmpretrain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.startswith(("conv_cls_head", "trans_cls_head")):
            out["head." + k] = v
            continue
        if re.match(r"(trans_1|conv_trans_\d+\.trans_block)\.", k):
            k = k.replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
            k = k.replace(".mlp.fc2.", ".ffn.layers.1.")
        out["backbone." + k] = v
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["authors", "mmpretrain", "safetensors", "conformer_vision"])
@pytest.mark.parametrize("route", ["pretrained=PATH", "pretrained_cfg_overlay"])
def test_classification_weights_load_into_the_feature_model(tmp_path, layout, route):
    torch.manual_seed(1)
    classifier = create_model(MINI, num_classes=5).eval()
    sd = classifier.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "authors":
        torch.save({"model": sd, "epoch": 300}, path)
    elif layout == "mmpretrain":
        torch.save({"state_dict": _to_mmpretrain(sd), "meta": {"epoch": 1}}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(build_checkpoint(classifier), path)
    source = (
        dict(pretrained=str(path))
        if route == "pretrained=PATH"
        else dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    )
    features = timm.create_model(MINI, features_only=True, **source).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = classifier.forward_intermediates(x, indices=list(default_out_indices()), intermediates_only=True)
        for got, ref in zip(features(x), want):
            torch.testing.assert_close(got, ref)


def test_pretrained_true_without_a_file_is_refused():
    with pytest.raises(ValueError, match="no weights are downloaded"):
        timm.create_model(MINI, pretrained=True, features_only=True)
