"""``optimize_for_inference``: a faster copy of a Conformer for inference, built from public APIs.

The model's ``forward`` is the reference network's maths; speed is this explicit, separate step.
The copy runs the same ``forward`` code on rewritten modules, each rewrite exact in real arithmetic
(so the outputs equal the model's to float32 rounding):

1. **BatchNorm folded into the convolutions** (``torch.nn.utils.fusion.fuse_conv_bn_eval``): every
   conv -> BatchNorm pair of the stem, the bottlenecks and FCUUp becomes one convolution with a
   bias, and the BatchNorm an ``nn.Identity``: one pass over each map instead of two.
2. **FCUDown pools before its 1x1 convolution**: a 1x1 convolution and an average pool are both
   linear and commute (bias included), so the convolution runs on a 16x (stage 1) / 4x (stage 2)
   smaller map. Done by module substitution: ``sample_pooling`` becomes ``Sequential(pool, conv)``
   and ``conv_project`` an ``nn.Identity``.
3. **Fused attention** (``F.scaled_dot_product_attention``) in every attention module.
4. **channels_last weights** (optional, on by default): oneDNN's convolutions run in NHWC, a
   channels_last weight makes the first convolution's output channels_last, and the layout then
   carries through the network (the token <-> map reshapes of the FCUs become views).

The copy is in eval mode with ``requires_grad=False`` parameters (an inference copy: BatchNorm is
gone, so it cannot be trained), its state dict has the folded weights (save the original model,
not the copy), and the input model is not touched. Any module holding Conformer blocks works, e.g.
timm's ``features_only`` wrapper.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .conformer import Conformer, ConvBlock, FCUDown, FCUUp
from .layers import Attention

__all__ = ["optimize_for_inference"]


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into the convolutions, FCUDown's pool
    moved before its convolution, fused attention and (``channels_last``) NHWC weights; same
    outputs to float32 rounding (module docstring). ``channels_last=False`` keeps the weights'
    layout, e.g. for graph exports."""
    fast = copy.deepcopy(model).eval()
    for module in list(fast.modules()):
        if isinstance(module, ConvBlock):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("residual_conv", "residual_bn")):
                _fold_batchnorm(module, conv, bn)
        elif isinstance(module, (Conformer, FCUUp)):
            _fold_batchnorm(
                module,
                "conv1" if isinstance(module, Conformer) else "conv_project",
                "bn1" if isinstance(module, Conformer) else "bn",
            )
        elif isinstance(module, FCUDown):
            _pool_first(module)
        elif isinstance(module, Attention):
            module.fused_attn = True
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast.requires_grad_(False)


def _fold_batchnorm(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    """``parent.conv_name`` -> one convolution equal to conv followed by the eval-mode BatchNorm
    ``parent.bn_name``, which becomes an identity (nothing to do when it already is one)."""
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())


def _pool_first(down: FCUDown) -> None:
    """FCUDown's ``sample_pooling(conv_project(x))`` computed as ``conv(pool(x))`` (exact reorder)."""
    if isinstance(down.conv_project, nn.Conv2d):
        down.sample_pooling = nn.Sequential(down.sample_pooling, down.conv_project)
        down.conv_project = nn.Identity()
