"""timm's model contract, checked on the mini variant (and on the meta device for the full ones):
pretrained cfgs, the features / pre-logits / classifier-removal conventions, reset_classifier,
factory options, parameter groups for layer decay, grad checkpointing, TorchScript and FX.
timm's own tests/test_models.py runs against every variant in scripts/timm_model_tests.sh."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters
from timm.optim import param_groups_layer_decay

import conformer_vision
from conformer_vision.models import create_model

MINI = "conformer_mini_test"  # CNN 64 channels at the end, embed 32, depth 12
ROOT = Path(__file__).parents[2]
WIDTHS = {
    "conformer_tiny_patch16": (256, 384),
    "conformer_small_patch16": (1024, 384),
    "conformer_small_patch32": (1024, 384),
    "conformer_base_patch16": (1536, 576),
    MINI: (64, 32),
}


def _mini(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MINI, **kwargs).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", conformer_vision.list_models())
def test_pretrained_cfg_and_widths(name):
    model = timm.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg and cfg["architecture"] == name
    assert cfg["input_size"] == (3, 224, 224) and cfg["pool_size"] == (7, 7) and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == IMAGENET_DEFAULT_MEAN and cfg["std"] == IMAGENET_DEFAULT_STD
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == ("conv_cls_head", "trans_cls_head")
    assert cfg["license"] == "apache-2.0" and "2105.03889" in cfg["paper_ids"]
    keys = model.state_dict().keys()
    assert {"conv1.weight", "conv_cls_head.weight", "trans_cls_head.weight"} <= set(keys)
    conv, embed = WIDTHS[name]
    assert model.in_chans == 3 and model.conv_features == conv and model.embed_dim == embed
    assert model.num_features == model.head_hidden_size == conv + embed
    features = model.forward_features(torch.zeros(1, 3, 224, 224, device="meta"))
    assert features.shape == (1, conv + embed, *cfg["pool_size"])


def test_classifier_removal_and_global_pool():
    x = torch.randn(2, 3, 64, 64)
    model = _mini(num_classes=10)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert model(x).shape == (2, 10) and pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(model(x), pre)  # pooled features
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)  # the unpooled map
        model.reset_classifier(5)  # keeps the pool: still the map; the heads are there for forward_heads
        assert torch.equal(model(x), features) and [h.shape for h in model.forward_heads(x)] == [(2, 5)] * 2
        model.reset_classifier(5, "avg")
        assert model(x).shape == (2, 5)
        trunk = {k: v for k, v in model.state_dict().items() if "cls_head" not in k}
        for kwargs, want in ((dict(num_classes=0), pre), (dict(num_classes=0, global_pool=""), features)):
            headless = _mini(**kwargs)
            headless.load_state_dict(trunk)  # strict: no head weights to hold
            assert torch.equal(headless(x), want)
    with pytest.raises(ValueError, match="global_pool must be"):
        _mini(global_pool="max")


def test_reset_classifier_follows_device_dtype_mode_and_frozen_weights():
    model = timm.create_model("conformer_tiny_patch16", device="meta")
    model.to(device="meta", dtype=torch.float64).eval()
    model.reset_classifier(2)
    for head in model.get_classifier():
        assert head.weight.device.type == "meta" and head.weight.dtype == torch.float64 and not head.training
    model.requires_grad_(False)
    model.reset_classifier(0)
    model.reset_classifier(0, "")
    assert not [n for n, p in model.named_parameters() if p.requires_grad]
    assert model.args.num_classes == 0  # what a checkpoint of it records


@pytest.mark.slow
def test_factory_options():
    with pytest.raises(TypeError):
        timm.create_model(MINI, not_a_model_arg=1)
    with pytest.raises(TypeError, match="unknown model option"):
        create_model(MINI, dropout=0.1)
    model = timm.create_model("conformer_base_patch16", device="meta", dtype=torch.bfloat16)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in model.parameters()) == 83_289_136
    sized = timm.create_model(MINI, img_size=96)  # recorded only: the network takes any size
    assert timm.models.get_model_input_config(sized)["input_size"] == (3, 96, 96)
    assert sized.variant == MINI and create_model("conformer_tiny", device="meta").variant == "conformer_tiny_patch16"


def test_group_matcher_feeds_timms_layer_decay():
    model = _mini()
    layer = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert layer["cls_token"] == layer["conv1.weight"] == layer["trans_patch_conv.bias"] == 0  # stem
    assert layer["conv_1.conv1.weight"] == layer["trans_1.attn.qkv.weight"] == 1  # block 1
    assert [layer[f"conv_trans_{k}.cnn_block.conv1.weight"] for k in range(2, 13)] == list(range(2, 13))
    assert layer["trans_norm.weight"] == 12 and layer["conv_cls_head.weight"] == layer["trans_cls_head.bias"] == 13
    names = [n for n, _ in model.named_parameters()]
    assert all(any(fnmatch.fnmatch(n, p) for n in names) for p in model.no_weight_decay())
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.5
    )
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == 0.5**13
    cls = next(g for g in groups if any(p is model.cls_token for p in g["params"]))
    assert cls["weight_decay"] == 0.0


@pytest.mark.slow
def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    x, results = torch.randn(2, 3, 64, 64), []
    for enabled in (False, True):
        model = _mini(num_classes=3).train()
        model.set_grad_checkpointing(enabled)
        out = model(x)
        out.sum().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a)


@pytest.mark.slow
def test_torchscript_and_fx_give_the_eager_outputs():
    """``torch.jit.script`` of the model, an FX trace with timm's tracer settings (the padding is a
    leaf function) and that trace scripted: the eager result each time, padding included."""
    model = _mini(num_classes=4)
    scripted = torch.jit.script(model)
    tracer = torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions()))
    tracer.is_leaf_module = lambda m, name: (
        isinstance(m, tuple(get_notrace_modules()))
        or (  # type: ignore[method-assign]
            torch.fx.Tracer.is_leaf_module(tracer, m, name)
        )
    )
    traced = torch.fx.GraphModule(model, tracer.trace(model))
    fx_scripted = torch.jit.script(traced)
    with torch.no_grad():
        for size in ((64, 64), (50, 70)):
            x = torch.randn(1, 3, *size)
            want = model(x)
            for run in (scripted, traced, fx_scripted):
                torch.testing.assert_close(run(x), want)


@pytest.mark.slow
def test_timm_model_tests_script_runs_timms_tests_against_the_installed_timm(tmp_path):
    """scripts/timm_model_tests.sh with a cached source distribution (no download): the conftest
    it writes registers conformer_*, the selection is -k conformer (a -k of the caller narrows it),
    and timm is the installed package, not the sdist's copy."""
    version = timm.__version__
    tests = tmp_path / f"timm-{version}" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_models.py").write_text(
        textwrap.dedent("""
        import os
        import pytest
        import timm
        import torch

        @pytest.mark.parametrize("name", timm.list_models("conformer*") + ["resnet18"])
        def test_forward(name):
            assert "site-packages" in timm.__file__ or "dist-packages" in timm.__file__
            assert os.environ["OMP_NUM_THREADS"] == "1" and "GITHUB_ACTIONS" not in os.environ
            assert timm.create_model(name, num_classes=3, device="meta").num_classes == 3
    """)
    )
    env = {**os.environ, "TIMM_TESTS_CACHE": str(tmp_path), "PYTHON": sys.executable, "GITHUB_ACTIONS": "true"}
    env.pop("OMP_NUM_THREADS", None)
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "timm_model_tests.sh"), "-k", "not base", "-rA"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    passed = sorted(line.split("[")[1].rstrip("]") for line in run.stdout.splitlines() if line.startswith("PASSED"))
    assert passed == sorted(n for n in conformer_vision.list_models() if "base" not in n)
    assert (tmp_path / f"timm-{version}" / "conftest.py").is_file()
