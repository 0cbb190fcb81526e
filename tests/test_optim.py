"""Parameter groups, optimisers and the per-step learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from conformer_vision.models import create_model
from conformer_vision.optim import build_optimizer, build_scheduler, param_groups


@pytest.fixture(scope="module")
def model():
    return create_model("conformer_mini_test", num_classes=10)


def test_no_weight_decay_on_norms_biases_and_cls_token(model) -> None:
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "cls_token" in no_decay_names and "bn1.weight" in no_decay_names and "trans_norm.weight" in no_decay_names
    assert "conv_cls_head.bias" in no_decay_names and "trans_1.attn.qkv.bias" in no_decay_names
    assert "conv1.weight" in decay_names and "trans_cls_head.weight" in decay_names
    assert all(p.ndim > 1 for p in decay["params"])
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_optimizers(model) -> None:
    adamw = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-7)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.99) and adamw.defaults["eps"] == 1e-7
    sgd = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]


def test_fused_kernels_match_the_loop_and_honour_the_grad_scaler() -> None:
    """The fused AdamW/SGD the trainer uses give the loop implementation's update, and under a
    GradScaler skip the step on non-finite gradients like it."""
    for name in ("adamw", "sgd"):
        nets = [create_model("conformer_mini_test", num_classes=4) for _ in range(2)]
        nets[1].load_state_dict(nets[0].state_dict())
        fused = build_optimizer(nets[0], name, lr=1e-2, weight_decay=0.05)
        assert fused.defaults["fused"] is True
        extra = {"momentum": 0.9} if name == "sgd" else {}
        loop = type(fused)(param_groups(nets[1], 0.05), lr=1e-2, fused=False, **extra)
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for a, b in zip(nets[0].parameters(), nets[1].parameters()):
                a.grad = torch.randn(a.shape, generator=g)
                b.grad = a.grad.clone()
            fused.step()
            loop.step()
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

        before = [p.detach().clone() for p in nets[0].parameters()]
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(torch.ones(()))
        for p in nets[0].parameters():
            p.grad = torch.full_like(p, float("inf"))
        scaler.unscale_(fused)
        scaler.step(fused)
        scaler.update()
        assert all(torch.equal(a, b) for a, b in zip(before, nets[0].parameters()))
        assert scaler.get_scale() == 512.0


def lr_at(name: str, steps: list[int], **kwargs) -> list[float]:
    """The learning rate used by the update at each global step (0-based) of a 10-epoch run with
    10 steps per epoch, 2 warm-up epochs from 1e-4 to base 1e-2."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    args = dict(epochs=10, steps_per_epoch=10, warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-3, lr_adjust=3, lr_gamma=0.5)
    sched = build_scheduler(opt, name, **{**args, **kwargs})
    out = []
    for step in steps:
        sched.step_update(step)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_is_linear_per_step() -> None:
    for name in ("cosine_lr", "step_lr", "multistep_lr", "exp_lr", "constant_lr"):
        lrs = lr_at(name, [0, 10, 19])
        assert lrs == pytest.approx([1e-4, 1e-4 + 10 * (1e-2 - 1e-4) / 20, 1e-4 + 19 * (1e-2 - 1e-4) / 20]), name


def test_cosine_from_base_to_min() -> None:
    # after warm-up (step 20) the cosine spans the remaining 80 steps
    lrs = lr_at("cosine_lr", [20, 60, 99, 200])
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs[1] == pytest.approx(1e-3 + 0.5 * (1e-2 - 1e-3))  # half-way
    assert lrs[2] == pytest.approx(1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * 79 / 80)))
    assert lrs[3] == pytest.approx(1e-3)


def test_epoch_decays_count_epochs_from_zero_and_stop_at_min_lr() -> None:
    epochs = [2, 3, 5, 6, 9]
    steps = [10 * e + 4 for e in epochs]  # mid-epoch: the value is constant within an epoch
    floor = 2e-3
    assert lr_at("step_lr", steps, min_lr=floor) == pytest.approx([max(1e-2 * 0.5 ** (e // 3), floor) for e in epochs])
    assert lr_at("exp_lr", steps, min_lr=floor) == pytest.approx([max(1e-2 * 0.5**e, floor) for e in epochs])
    assert lr_at("multistep_lr", steps, min_lr=floor) == pytest.approx(
        [max(1e-2 * 0.5 ** (e / 3), floor) for e in epochs]
    )
    assert lr_at("step_lr", [94])[0] == pytest.approx(1e-2 * 0.5**3)  # above the default floor 1e-3
    assert floor in lr_at("exp_lr", [94], min_lr=floor)
    assert lr_at("constant_lr", steps) == pytest.approx([1e-2] * len(epochs))


def test_unknown_names_are_refused(model) -> None:
    with pytest.raises(ValueError, match="adamw, sgd"):
        build_optimizer(model, "lamb", lr=1e-3, weight_decay=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    with pytest.raises(ValueError, match="cosine_lr"):
        build_scheduler(opt, "poly", epochs=1, steps_per_epoch=1)


# -- layer-wise learning-rate decay and frozen stages ---------------------------------------------


def _layer(name: str) -> int:
    """The layer a parameter is in, written out independently of the model's group_matcher: the stem
    (shared convolution, class token, patch embedding) 0, block k k (the final norm with block 12),
    the heads 13."""
    top = name.split(".")[0]
    if top in ("cls_token", "conv1", "bn1", "trans_patch_conv"):
        return 0
    if top in ("conv_1", "trans_1"):
        return 1
    if top.startswith("conv_trans_"):
        return int(top.rsplit("_", 1)[1])
    return {"trans_norm": 12, "conv_cls_head": 13, "trans_cls_head": 13}[top]


def test_layer_decay_groups_scale_each_layer_and_keep_no_weight_decay() -> None:
    model = create_model("conformer_mini_test", num_classes=10)
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())  # every parameter in exactly one group
    scale_of = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay_of = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, scale in scale_of.items():
        assert scale == pytest.approx(0.75 ** (13 - _layer(name))), name
    by_layer = sorted(scale_of.items(), key=lambda item: _layer(item[0]))
    assert all(a[1] <= b[1] for a, b in zip(by_layer, by_layer[1:]))  # monotonic from the stem to the heads
    assert scale_of["cls_token"] == scale_of["conv1.weight"] == pytest.approx(0.75**13)
    assert scale_of["conv_trans_12.trans_block.attn.qkv.weight"] == scale_of["trans_norm.weight"] == pytest.approx(0.75)
    assert scale_of["conv_cls_head.weight"] == scale_of["trans_cls_head.bias"] == 1.0
    for name in (
        "cls_token",
        "bn1.weight",
        "trans_norm.bias",
        "conv_trans_3.trans_block.norm1.weight",
        "conv_cls_head.bias",
        "trans_1.attn.qkv.bias",
    ):
        assert decay_of[name] == 0.0, name
    for name in (
        "conv1.weight",
        "trans_patch_conv.weight",
        "conv_trans_5.trans_block.mlp.fc1.weight",
        "trans_cls_head.weight",
    ):
        assert decay_of[name] == 0.05, name
    assert opt.param_groups[0]["lr_scale"] == 1.0  # the group the log reports the lr of
    assert opt.defaults["fused"] is True  # the fused kernels are kept with layer-wise groups
    assert isinstance(build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, layer_decay=0.5), torch.optim.SGD)


def test_the_schedule_applies_the_layer_scale_through_warmup_and_decay() -> None:
    model = create_model("conformer_mini_test", num_classes=10)
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.05, layer_decay=0.5)
    sched = build_scheduler(
        opt, "cosine_lr", epochs=10, steps_per_epoch=10, warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-3
    )
    stem = next(g for g in opt.param_groups if any(p is model.conv1.weight for p in g["params"]))
    heads = opt.param_groups[0]
    for step, scheduled in ((0, 1e-4), (10, 1e-4 + 10 * (1e-2 - 1e-4) / 20), (20, 1e-2), (60, 1e-3 + 0.5 * 9e-3)):
        sched.step_update(step)
        assert heads["lr"] == pytest.approx(scheduled) and stem["lr"] == pytest.approx(scheduled * 0.5**13)
    # what the optimizer does with it: one AdamW step moves the stem about lr x scale, the heads about lr
    before = model.conv1.weight.detach().clone(), model.conv_cls_head.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    stem_step = float((model.conv1.weight.detach() - before[0]).abs().max())
    head_step = float((model.conv_cls_head.weight.detach() - before[1]).abs().max())
    assert stem_step == pytest.approx(stem["lr"], rel=0.05) and head_step == pytest.approx(heads["lr"], rel=0.05)


def test_frozen_parameters_are_left_out_of_every_group() -> None:
    from conformer_vision.finetune import freeze_stages

    model = create_model("conformer_mini_test", num_classes=10)
    frozen = freeze_stages(model, 5)  # linear probe: the whole backbone
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == [
        "conv_cls_head.bias",
        "conv_cls_head.weight",
        "trans_cls_head.bias",
        "trans_cls_head.weight",
    ]
    assert len(frozen) + len(trainable) == len(list(model.parameters()))
    for layer_decay in (None, 0.75):
        groups = param_groups(model, 0.05, layer_decay)
        grouped = [p for g in groups for p in g["params"]]
        assert len(grouped) == 4 and all(p.requires_grad for p in grouped) and all(g["params"] for g in groups)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(torch.nn.Linear(2, 2).requires_grad_(False), "adamw", lr=1e-3, weight_decay=0.0)
