"""Freezing the first stages of a Conformer for fine-tuning and linear probing.

``freeze_stages(model, n)`` turns ``requires_grad`` off for every parameter of the first ``n``
stages (they are then left out of the optimizer: ``optim.param_groups``), and ``TrainingModule``
(the two-head training module of ``train``) keeps their BatchNorms in eval mode, so their running
statistics stay those of the pretrained weights, as linear probing and the authors' detection
fine-tuning expect. Stages follow the CNN branch's resolution, numbered as torchvision numbers
``conv1, layer1 .. layer4`` (and as ``backbones``' ``trainable_layers`` counts them from the top:
``trainable_layers = 5 - freeze_stages``). At depth d (12 for every variant), with d/3 blocks per
stage:

    stage 0  the stem: conv1, bn1 (the shared convolution)                       stride 4
    stage 1  blocks 1..d/3: conv_1, trans_patch_conv, trans_1, cls_token, conv_trans_2..d/3   stride 4
    stage 2  blocks d/3+1..2d/3                                                   stride 8
    stage 3  blocks 2d/3+1..d-1                                                   stride 16
    stage 4  block d (its fusion halves the map) and the final norm trans_norm     stride 32

A Conformer block holds both branches, so a frozen stage freezes its transformer blocks too.
``freeze_stages: 5`` freezes the whole backbone: only the two heads (``conv_cls_head``,
``trans_cls_head``) train. The heads are never frozen.
"""

from __future__ import annotations

import re

from timm.utils import unwrap_model
from torch import nn

from .engine import BothHeads

__all__ = [
    "NUM_STAGES",
    "STAGE_NAMES",
    "stage_of",
    "freeze_stages",
    "frozen_norms",
    "describe_frozen",
    "TrainingModule",
]

NUM_STAGES = 5
"""The stem and four stages: ``freeze_stages`` is in 0..NUM_STAGES."""

STAGE_NAMES = ("the stem", "blocks 1-4", "blocks 5-8", "blocks 9-11", "block 12 and the final norm")
"""What each stage holds at depth 12 (for the start-up summary)."""

_STEM = ("conv1", "bn1")
_FIRST_BLOCK = ("conv_1", "trans_patch_conv", "trans_1", "cls_token")
_BLOCK = re.compile(r"conv_trans_(\d+)")


def stage_of(name: str, depth: int = 12) -> int | None:
    """The stage (0..4) of a parameter or module of a Conformer, from its dotted name; None for the
    heads and anything outside the blocks. Wrapper prefixes (DDP's ``module.``, timm's feature
    wrappers, a detector's ``backbone.body.model.``) are skipped: the first component that names a
    Conformer top-level module decides."""
    for part in name.split("."):
        if part in _STEM:
            return 0
        if part in _FIRST_BLOCK:
            return 1
        if part == "trans_norm":
            return NUM_STAGES - 1
        match = _BLOCK.fullmatch(part)
        if match:
            block = int(match.group(1))
            return NUM_STAGES - 1 if block == depth else (block - 1) // (depth // 3) + 1
    return None


def _depth(model: nn.Module) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "depth", 12))


def freeze_stages(model: nn.Module, count: int) -> list[str]:
    """Turn ``requires_grad`` off for every parameter of stages ``0 .. count-1`` of the Conformer in
    ``model`` (DDP / compile wrappers seen through). Returns the frozen parameters' names.
    ValueError for a count outside 0..NUM_STAGES."""
    if not 0 <= count <= NUM_STAGES:
        raise ValueError(f"freeze_stages must be in 0..{NUM_STAGES}, got {count}")
    bare = unwrap_model(model)
    depth = _depth(bare)
    frozen = []
    for name, param in bare.named_parameters():
        stage = stage_of(name, depth)
        if stage is not None and stage < count:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def frozen_norms(model: nn.Module, count: int) -> list[nn.Module]:
    """The BatchNorms (any ``_BatchNorm``, SyncBatchNorm included) of stages ``0 .. count-1``."""
    bare = unwrap_model(model)
    depth = _depth(bare)
    return [
        m
        for name, m in bare.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (s := stage_of(name, depth)) is not None and s < count
    ]


def describe_frozen(count: int) -> str:
    """One phrase for the start-up summary."""
    if count == 0:
        return "nothing frozen"
    if count == NUM_STAGES:
        return "the whole backbone frozen (linear probe: only the two heads train)"
    stages = "stage 0" if count == 1 else f"stages 0-{count - 1}"
    return f"{stages} frozen ({', '.join(STAGE_NAMES[:count])})"


class TrainingModule(BothHeads):
    """``BothHeads`` whose ``train()`` leaves the BatchNorms of the ``frozen`` first stages in eval
    mode (running statistics used and kept, not updated); ``frozen=0`` is plain ``BothHeads``.
    The norms are found by name each time, so modules swapped after construction (SyncBatchNorm)
    are covered."""

    def __init__(self, module: nn.Module, frozen: int = 0) -> None:
        super().__init__(module)
        self.frozen = frozen

    def train(self, mode: bool = True) -> TrainingModule:
        super().train(mode)
        if mode and self.frozen:
            for norm in frozen_norms(self.module, self.frozen):
                norm.eval()
        return self
