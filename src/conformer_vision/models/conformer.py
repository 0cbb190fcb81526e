"""Conformer: local features coupled with global representations for visual recognition.

Peng, Huang, Gu, Xie, Wang, Jiao, Ye. ICCV 2021, https://arxiv.org/abs/2105.03889.
Written from the architecture description of the paper and the authors' reference network
(github.com/pengzhiliang/Conformer); parameter names follow the reference so that its
checkpoints load unchanged, and a state dict from it gives the same outputs to float32 rounding.

A CNN branch (ResNet bottlenecks) and a transformer branch (ViT blocks, no position embedding)
run side by side from a shared stem. From block 2 on, every ``ConvTransBlock`` couples them with
Feature Coupling Units: ``FCUDown`` pools the bottleneck's middle feature map into patch tokens
that are added to the transformer input, ``FCUUp`` turns the transformer output back into a
feature map that is added inside the next bottleneck (``fusion_block``). Each branch has its own
linear classifier; the prediction is the sum of the two heads' logits.

The model keeps timm's model contract (``forward_features`` / ``forward_head``, ``num_classes=0``,
``global_pool=''``, ``forward_intermediates`` and ``features_only``, grad checkpointing, scripting
and FX tracing); ``forward`` is the reference network's maths, once. Faster inference is an
explicit step, ``optimize.optimize_for_inference``.

Layout of this file (timm order): blocks -> model -> weight loading -> default cfgs -> variants.
"""

# No ``from __future__ import annotations`` here: torch.fx copies the forward signatures' annotations
# into the code of a traced graph, which TorchScript must then resolve as real types.
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import (
    adapt_input_conv,
    build_model_with_cfg,
    checkpoint,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from torch import nn

from ..pretrained import PUBLISHED, fetch, no_weights_message
from .convert import (
    checkpoint_filter_fn,
    infer_architecture,
    load_state_dict_strict,
    read_weights,
    reconcile_model_args,
)
from .layers import SamePadMaxPool2d, TransformerBlock, gelu_layer, pad_to_multiple
from .variants import ALIASES, VARIANTS, ConformerArgs, canonical_name, list_models, variant_args

__all__ = [
    "Conformer",
    "ConformerArgs",
    "VARIANTS",
    "ALIASES",
    "create_model",
    "list_models",
    "variant_args",
    "canonical_name",
    "default_out_indices",
]


def _bn(channels: int, eps: float = 1e-6) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)


class ConvBlock(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) with an optional injection point.

    ``forward(x, x_t)`` adds ``x_t`` (the FCUUp output) to the input of the 3x3 conv, which
    carries the stride. Returns ``(out, x2)``: the block output (B, out, H/s, W/s) and the
    activated middle map (B, out/4, H/s, W/s) that the FCUDown reads. The ReLUs work in place on
    fresh tensors, as in the reference.
    """

    expansion = 4

    def __init__(self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        med = outplanes // self.expansion
        self.conv1 = nn.Conv2d(inplanes, med, 1, bias=False)
        self.bn1 = _bn(med)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(med, med, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(med)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(med, outplanes, 1, bias=False)
        self.bn3 = _bn(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
            self.residual_bn = _bn(outplanes)
        else:
            self.residual_conv = nn.Identity()
            self.residual_bn = nn.Identity()

    def forward(self, x: torch.Tensor, x_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x
        x = self.act1(self.bn1(self.conv1(x)))
        if x_t is not None:
            x = x + x_t
        x2 = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x2))
        residual = self.residual_bn(self.residual_conv(residual))
        return self.act3(x + residual), x2


class FCUDown(nn.Module):
    """CNN feature map -> patch tokens: 1x1 conv, average pool by ``dw_stride``, LayerNorm, GELU;
    the transformer's class token is re-attached in front. (B, C, H, W), (B, N+1, D) -> (B, N+1, D)."""

    def __init__(self, inplanes: int, embed_dim: int, dw_stride: int, approximate_gelu: bool = False) -> None:
        super().__init__()
        self.dw_stride = dw_stride
        self.conv_project = nn.Conv2d(inplanes, embed_dim, 1)
        self.sample_pooling = nn.AvgPool2d(dw_stride, dw_stride)
        self.ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.act = gelu_layer(approximate_gelu)()

    def forward(self, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        x = self.sample_pooling(self.conv_project(x))
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = self.act(self.ln(x))
        return torch.cat([x_t[:, :1], x], dim=1)


class FCUUp(nn.Module):
    """Patch tokens -> CNN feature map: drop the class token, 1x1 conv, BatchNorm, ReLU, nearest
    upsampling by ``up_stride`` (a scale factor, not a computed size, so ONNX runtimes agree)."""

    def __init__(self, embed_dim: int, outplanes: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(embed_dim, outplanes, 1)
        self.bn = _bn(outplanes)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x[:, 1:].transpose(1, 2).reshape(B, C, h, w)  # (B, D, h, w); a channels_last view
        x = self.act(self.bn(self.conv_project(x)))
        if self.up_stride == 1:
            return x
        return nn.functional.interpolate(x, scale_factor=float(self.up_stride), mode="nearest")


class ConvTransBlock(nn.Module):
    """One coupled step: bottleneck -> FCUDown -> transformer block -> FCUUp -> fusion bottleneck.
    (B, C_in, H, W), (B, N+1, D) -> (B, C_out, H/s, W/s), (B, N+1, D)."""

    def __init__(
        self,
        inplanes: int,
        outplanes: int,
        res_conv: bool,
        stride: int,
        dw_stride: int,
        embed_dim: int,
        block_kwargs: dict[str, Any],
        drop_path: float,
        last_fusion: bool = False,
        approximate_gelu: bool = False,
    ) -> None:
        super().__init__()
        med = outplanes // ConvBlock.expansion
        self.dw_stride = dw_stride
        self.cnn_block = ConvBlock(inplanes, outplanes, stride=stride, res_conv=res_conv)
        self.fusion_block = ConvBlock(outplanes, outplanes, stride=2 if last_fusion else 1, res_conv=last_fusion)
        self.squeeze_block = FCUDown(med, embed_dim, dw_stride, approximate_gelu)
        self.expand_block = FCUUp(embed_dim, med, dw_stride)
        self.trans_block = TransformerBlock(embed_dim, drop_path=drop_path, **block_kwargs)

    def forward(self, x: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, x2 = self.cnn_block(x)
        h, w = x2.shape[-2] // self.dw_stride, x2.shape[-1] // self.dw_stride
        x_t = self.trans_block(self.squeeze_block(x2, x_t) + x_t)
        x, _ = self.fusion_block(x, self.expand_block(x_t, h, w))
        return x, x_t


GLOBAL_POOLS = ("avg", "")


class Conformer(nn.Module):
    """Conformer classifier. ``forward`` returns the fused logits (B, num_classes): the sum of the
    CNN head and the transformer head, in training and evaluation mode alike.

    **Features of both branches in one tensor.** ``forward_features(x)`` is (B, num_features, h, w)
    at stride 32: channels ``[:conv_features]`` are the CNN branch's final map, channels
    ``[conv_features:]`` the transformer branch's normalised class token, repeated over the grid.
    ``forward_head`` average-pools the first part and reads the class token from the second
    (``split_features`` gives both), so ``num_features == head_hidden_size == conv_features +
    embed_dim``. ``num_classes=0``: ``forward`` returns these pooled features (B, head_hidden_size);
    ``global_pool=''``: the unpooled map (the heads are not applied). ``forward_heads(x)`` gives the two
    heads' logits ``(conv_logits, trans_logits)`` for the two-head loss.

    **Pyramids.** ``feature_info`` lists, in stride order, the CNN branch's maps after the blocks the
    authors feed to their FPN (after blocks 4, 8 and 11 at depth 12: the ends of stages 1 and 2 and
    the block before the last; strides 4, 8, 16), then the transformer branch's patch tokens after
    the last block as an NCHW map (embed_dim channels, stride patch_size), then the CNN map after
    the last block (stride 32). Block 1 is ``conv_1``/``trans_1``, block k is ``conv_trans_k``.
    ``forward_intermediates`` and timm's ``features_only=True`` take these indices; the default is
    the four CNN maps (``default_out_indices``), and index -2 (3 at depth >= 6) adds the tokens.

    Inputs of any size are accepted: height and width are zero-padded (symmetrically; zero is the
    mean colour after normalisation) up to a multiple of ``patch_size``; inputs that are already
    multiples give exactly the reference network's result, and maps are those of the padded input.
    """

    __jit_unused_properties__ = ["blocks"]

    def __init__(
        self,
        args: ConformerArgs | None = None,
        *,
        global_pool: str = "avg",
        img_size: int | tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        """``args`` or the ``ConformerArgs`` fields as keywords (unknown ones: TypeError).

        ``global_pool``: 'avg' or '' (no pooling: ``forward`` returns the feature map, as timm's
        models do; ``forward_heads`` still pools). ``img_size`` is only recorded (timm's nominal
        input size): the network has no position embedding and takes any size. ``device`` /
        ``dtype``: where and in which precision the parameters are created (``device='meta'``:
        shapes only)."""
        super().__init__()
        if args is not None and kwargs:
            raise TypeError("pass either ConformerArgs or keyword arguments, not both")
        a = args if args is not None else ConformerArgs(**kwargs)
        if a.depth % 3 or a.depth < 3:
            raise ValueError(f"depth must be a positive multiple of 3, got {a.depth}")
        if a.patch_size not in (16, 32):
            raise ValueError(f"patch_size must be 16 or 32, got {a.patch_size}")
        _check_pool(global_pool)
        self.args = a
        self.num_classes = a.num_classes
        self.global_pool = global_pool
        self.in_chans = a.in_chans
        self.patch_size = a.patch_size
        self.embed_dim = a.embed_dim
        self.img_size = img_size
        self.variant: str | None = None  # the registered name, set by the factories
        self.grad_checkpointing = False
        stage_ch = [int(a.base_channel * a.channel_ratio * m) for m in (1, 2, 4)]
        self.conv_features = stage_ch[2]
        self.num_features = self.head_hidden_size = stage_ch[2] + a.embed_dim
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(a, stage_ch)
        if dtype is not None:
            self.to(dtype)

    def _build(self, a: ConformerArgs, stage_ch: list[int]) -> None:
        dpr = torch.linspace(0, a.drop_path_rate, a.depth, device="cpu").tolist()
        block_kwargs = dict(
            num_heads=a.num_heads,
            mlp_ratio=a.mlp_ratio,
            qkv_bias=a.qkv_bias,
            drop=a.drop_rate,
            attn_drop=a.attn_drop_rate,
            approximate_gelu=a.approximate_gelu,
            fused_attn=a.fused_attn,
        )

        # Stem, shared by both branches: (B, 3, H, W) -> (B, 64, H/4, W/4).
        self.conv1 = nn.Conv2d(a.in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = SamePadMaxPool2d(3, 2) if a.same_pad_maxpool else nn.MaxPool2d(3, 2, 1)

        # Block 1: a plain bottleneck and the first transformer block on patch tokens.
        trans_dw_stride = a.patch_size // 4
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.embed_dim))
        self.conv_1 = ConvBlock(64, stage_ch[0], res_conv=True)
        self.trans_patch_conv = nn.Conv2d(64, a.embed_dim, trans_dw_stride, stride=trans_dw_stride)
        self.trans_1 = TransformerBlock(a.embed_dim, drop_path=dpr[0], **block_kwargs)
        cnn_maps = {1: dict(num_chs=stage_ch[0], reduction=4, module="conv_1")}

        # Blocks 2..depth in three stages; each stage after the first halves the CNN resolution
        # in its first block, and the FCU stride halves with it so token count stays fixed.
        per_stage = a.depth // 3
        index, in_ch, reduction = 2, stage_ch[0], 4
        for stage, out_ch in enumerate(stage_ch):
            for j in range(per_stage - 1 if stage == 0 else per_stage):
                first = stage > 0 and j == 0
                last = index == a.depth
                block = ConvTransBlock(
                    in_ch,
                    out_ch,
                    res_conv=first,
                    stride=2 if first else 1,
                    dw_stride=trans_dw_stride >> stage,
                    embed_dim=a.embed_dim,
                    block_kwargs=block_kwargs,
                    drop_path=dpr[index - 1],
                    last_fusion=last,
                    approximate_gelu=a.approximate_gelu,
                )
                self.add_module(f"conv_trans_{index}", block)
                reduction *= (2 if first else 1) * (2 if last else 1)
                cnn_maps[index] = dict(num_chs=out_ch, reduction=reduction, module=f"conv_trans_{index}")
                index, in_ch = index + 1, out_ch

        self.trans_norm = nn.LayerNorm(a.embed_dim, eps=a.trans_norm_eps)
        self.conv_cls_head = _head(self.conv_features, a.num_classes)
        self.trans_cls_head = _head(a.embed_dim, a.num_classes)
        tokens = dict(
            num_chs=a.embed_dim,
            num_chs_norm=a.embed_dim,
            reduction=a.patch_size,
            module=f"conv_trans_{a.depth}.trans_block",
        )
        taps = sorted({per_stage, 2 * per_stage, a.depth - 1})
        self.feature_info = [dict(cnn_maps[b], block=b, branch="cnn") for b in taps] + [
            dict(tokens, block=a.depth, branch="transformer"),
            dict(cnn_maps[a.depth], block=a.depth, branch="cnn"),
        ]
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    # -- structure ---------------------------------------------------------------------------

    @property
    def blocks(self) -> list[ConvTransBlock]:
        """The coupled blocks ``conv_trans_2 .. conv_trans_{depth}`` present, in order."""
        return [m for m in self.children() if isinstance(m, ConvTransBlock)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's ``param_groups_layer_decay``: the stem (shared convolution,
        class token, patch embedding), block 1, blocks 2..depth, then the heads (the final norm
        goes with the last block)."""
        return dict(
            stem=r"^cls_token|^conv1\.|^bn1\.|^trans_patch_conv\.",
            blocks=[(r"^(?:conv_1|trans_1)\.", (0,)), (r"^conv_trans_(\d+)\.", None), (r"^trans_norm\.", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each coupled block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_fused_attn(self, enabled: bool) -> None:
        """Switch every attention between ``F.scaled_dot_product_attention`` and the explicit
        softmax of the reference (same maths to float32 rounding)."""
        for m in self.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = enabled

    @torch.jit.ignore
    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.conv_cls_head, self.trans_cls_head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New heads for ``num_classes`` outputs (0: none, ``forward`` gives pooled features);
        ``global_pool`` 'avg' or '' (``forward`` returns the unpooled map), None keeps the current.
        The heads are created on the model's device and dtype, in its training mode."""
        pool = self.global_pool if global_pool is None else global_pool
        _check_pool(pool)
        self.global_pool = pool
        self.num_classes = num_classes
        self.args = dataclasses.replace(self.args, num_classes=num_classes)
        ref = self.cls_token
        factory = dict(device=ref.device, dtype=ref.dtype)
        self.conv_cls_head = _head(self.conv_features, num_classes, **factory).train(self.training)
        self.trans_cls_head = _head(self.embed_dim, num_classes, **factory).train(self.training)
        for head in self.get_classifier():
            _init_weights(head)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B, C, H, W) symmetrically so H and W are multiples of the patch size."""
        return pad_to_multiple(x, self.patch_size)

    # -- forward -----------------------------------------------------------------------------

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded input -> block 1's CNN map (B, C1, H/4, W/4) and tokens (B, 1 + N, D)."""
        x_base = self.maxpool(self.act1(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x, _ = self.conv_1(x_base)
        x_t = self.trans_patch_conv(x_base).flatten(2).transpose(1, 2)  # (B, N, D)
        x_t = torch.cat([self.cls_token.expand(x_t.shape[0], -1, -1), x_t], dim=1)
        return x, self.trans_1(x_t)

    def _pack(self, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) CNN map and (B, 1 + N, D) tokens -> the features tensor (class docstring)."""
        cls = self.trans_norm(x_t[:, 0])  # (B, D)
        return torch.cat([x, cls[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], dim=1)

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_features`` output -> (CNN map (B, C, h, w), class token (B, D))."""
        return features[:, : self.conv_features], features[:, self.conv_features :, 0, 0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) (class docstring)."""
        x, x_t = self._stem(pad_to_multiple(x, self.patch_size))
        for block in self.children():
            if hasattr(block, "fusion_block"):  # a ConvTransBlock (TorchScript resolves hasattr per block type)
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x, x_t = checkpoint(block, x, x_t)
                else:
                    x, x_t = block(x, x_t)
        return self._pack(x, x_t)

    def _pooled(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features -> (average-pooled CNN map (B, C), class token (B, D)): what the heads read."""
        cnn, cls = self.split_features(features)
        return cnn.mean(dim=(2, 3)), cls

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features -> fused logits (B, classes); ``pre_logits`` or ``num_classes=0``: the pooled
        features (B, head_hidden_size); ``global_pool=''``: the features unchanged."""
        if self.global_pool == "":
            return x
        cnn, cls = self._pooled(x)
        if pre_logits or self.num_classes == 0:
            return torch.cat([cnn, cls], dim=1)
        return self.conv_cls_head(cnn) + self.trans_cls_head(cls)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits ``(conv_logits, trans_logits)``, each (B, classes): what the loss needs
        (with ``num_classes=0``, the two branches' pooled features)."""
        cnn, cls = self._pooled(self.forward_features(x))
        return self.conv_cls_head(cnn), self.trans_cls_head(cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- intermediate features ---------------------------------------------------------------

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature API. ``indices`` select entries of ``feature_info`` (class
        docstring; an int n = the last n, None = all); ``norm`` applies the final LayerNorm to
        patch-token maps; ``stop_early`` runs blocks only up to the last one needed. Returns the
        NCHW maps in the order asked, after ``forward_features``' output unless
        ``intermediates_only`` (with ``stop_early``, the features at the stopping block)."""
        if output_fmt != "NCHW":
            raise ValueError(f"Conformer intermediates are NCHW maps, got output_fmt={output_fmt!r}")
        take_indices = _take_indices(len(self.feature_info), indices)
        wanted = [(self.feature_info[i]["block"], self.feature_info[i]["branch"]) for i in take_indices]
        last_needed = max(block for block, _ in wanted)
        x = pad_to_multiple(x, self.patch_size)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        taps: dict[tuple[int, str], torch.Tensor] = {}

        def tap(block: int, x: torch.Tensor, x_t: torch.Tensor) -> None:
            if (block, "cnn") in wanted:
                taps[block, "cnn"] = x
            if (block, "transformer") in wanted:
                tokens = self.trans_norm(x_t[:, 1:]) if norm else x_t[:, 1:]  # (B, N, D)
                taps[block, "transformer"] = tokens.transpose(1, 2).reshape(x_t.shape[0], -1, *grid)

        x, x_t = self._stem(x)
        tap(1, x, x_t)
        for number, block in enumerate(self.blocks, start=2):
            if stop_early and number > last_needed:
                break
            x, x_t = checkpoint(block, x, x_t) if self.grad_checkpointing else block(x, x_t)
            tap(number, x, x_t)
        intermediates = [taps[w] for w in wanted]
        if intermediates_only:
            return intermediates
        return self._pack(x, x_t), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove the blocks after the last one ``indices`` need (and the final norm and the heads
        when asked), as timm's feature wrappers do; returns the absolute indices."""
        take_indices = _take_indices(len(self.feature_info), indices)
        keep = max(self.feature_info[i]["block"] for i in take_indices)
        for number in range(max(keep + 1, 2), self.args.depth + 1):
            if hasattr(self, f"conv_trans_{number}"):
                delattr(self, f"conv_trans_{number}")
        last = self.blocks[-1].fusion_block if keep > 1 else self.conv_1
        self.conv_features = last.conv3.out_channels  # the features now end at block ``keep``
        self.num_features = self.head_hidden_size = self.conv_features + self.embed_dim
        if prune_norm:
            self.trans_norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def _take_indices(count: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """timm's index convention over ``count`` features: None = all, an int n = the last n, a
    sequence = those (negative from the end); absolute indices out, IndexError when out of range."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise IndexError(f"last-n ({indices}) is out of range (1 to {count})")
        return list(range(count - indices, count))
    absolute = [i + count if i < 0 else i for i in indices]
    bad = [i for i, a in zip(indices, absolute) if not 0 <= a < count]
    if bad or not absolute:
        raise IndexError(
            f"feature indices {list(indices)} are out of range (0 to {count - 1}, or negative from the end)"
        )
    return absolute


def _check_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")


def _head(in_features: int, num_classes: int, **factory: Any) -> nn.Module:
    return nn.Linear(in_features, num_classes, **factory) if num_classes > 0 else nn.Identity()


def _init_weights(m: nn.Module) -> None:
    """The reference initialisation: truncated normal Linear, kaiming conv, unit norms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def default_out_indices(depth: int = 12) -> tuple[int, ...]:
    """``feature_info`` indices of the CNN maps the authors feed to their FPN (every entry but the
    patch tokens): after blocks 4, 8, 11 and 12 at depth 12, strides 4, 8, 16, 32."""
    count = len({depth // 3, 2 * depth // 3, depth - 1}) + 2
    return tuple(i for i in range(count) if i != count - 2)


# ---------------------------------------------------------------------------------------------
# Building with weights


def _weights_file(variant: str, pretrained: bool | str | os.PathLike, kwargs: dict[str, Any]) -> str | None:
    """The weights file to read with this project's reader, if any: ``pretrained=PATH``, or
    ``pretrained=True`` with a ``file`` in the pretrained cfg (``pretrained_cfg_overlay=dict(file=PATH)``),
    or with a ``url`` (the published weights, or an overlay's): fetched once into the torch hub cache
    (``pretrained.fetch``: timeout, hash check, nothing half-written kept). A hub folder or an
    ``hf_hub_id`` is left to timm. ``pretrained=True`` without a source is a ValueError."""
    if isinstance(pretrained, (str, os.PathLike)):
        return os.fspath(pretrained)
    if not pretrained:
        return None
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if cfg.file and cfg.source != "local-dir":
        return str(cfg.file)
    if cfg.state_dict or cfg.hf_hub_id or cfg.source == "local-dir":
        return None  # timm loads it (checkpoint_filter_fn maps foreign key layouts)
    if cfg.url:
        return str(fetch(cfg.url, cache_dir=kwargs.get("cache_dir"), what=f"{variant}'s pretrained weights"))
    raise ValueError(no_weights_message(variant))


def _args_for_file(
    variant: str, sd: dict[str, torch.Tensor], meta: dict[str, Any], explicit: dict[str, Any], source: str
) -> ConformerArgs:
    """The arguments of the model a weights file gets: a self-describing file's own (with what the
    caller asked for reconciled, ``convert.reconcile_model_args``), else the variant's with the
    file's head count unless ``num_classes`` is given."""
    if meta.get("model_args") is not None:
        return reconcile_model_args(meta["model_args"], explicit, source, meta.get("arch"), variant)
    held = infer_architecture(sd).get("num_classes")
    return variant_args(variant, **{"num_classes": held or 1000, **explicit})


def _conformer_with_weights(sd: dict[str, torch.Tensor], source: str, variant: str, **kwargs: Any) -> Conformer:
    """A Conformer with ``sd`` loaded strictly (``convert.load_state_dict_strict``); timm's builder
    calls this as the model class, so the weights are in before any ``features_only`` pruning.
    Another ``in_chans`` than the file's adapts the stem's weights as timm does for its models
    (``adapt_input_conv``: summed to one channel, or repeated and rescaled; logged)."""
    model = Conformer(**kwargs)
    model.variant = variant  # named in the error of a file that does not fit
    stem = sd.get("conv1.weight")
    if stem is not None and stem.dim() == 4 and stem.shape[1] != model.in_chans:
        logging.getLogger(__name__).info(
            "%s: stem weights for %d input channels adapted to %d", source, stem.shape[1], model.in_chans
        )
        sd = {**sd, "conv1.weight": adapt_input_conv(model.in_chans, stem)}
    load_state_dict_strict(model, sd, source=source)
    return model


def _create_conformer(variant: str, pretrained: bool | str | os.PathLike = False, **kwargs: Any) -> nn.Module:
    """timm's builder for one variant: ``features_only`` (getter features, ``default_out_indices``),
    pretrained cfgs, and weights from ``pretrained=PATH`` read with this project's reader (every
    layout of ``convert.py``; a self-describing file rebuilds the network it describes)."""
    path = _weights_file(variant, pretrained, kwargs)
    args = variant_args(variant, **{k: v for k, v in kwargs.items() if k in ConformerArgs.__dataclass_fields__})
    model_cls: Callable[..., Conformer] = Conformer
    if path is not None:
        sd, meta = read_weights(path)
        explicit = {k: v for k, v in kwargs.items() if k in ConformerArgs.__dataclass_fields__}
        args = _args_for_file(variant, sd, meta, explicit, path)
        kwargs.update(args.to_dict())
        model_cls = partial(_conformer_with_weights, sd, path, variant)
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        kwargs["pretrained_cfg_overlay"] = {**overlay, "file": path, "num_classes": args.num_classes}
    else:
        kwargs = {**VARIANTS[variant], **kwargs}
    feature_cfg = dict(
        feature_cls="getter", out_indices=default_out_indices(args.depth), **kwargs.pop("feature_cfg", {})
    )
    model = build_model_with_cfg(
        model_cls,
        variant,
        pretrained=path is None and bool(pretrained),
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg,
        **kwargs,
    )
    for module in model.modules():  # the Conformer itself, or inside timm's features_only wrapper
        if isinstance(module, Conformer):
            module.variant = variant
    return model


def create_model(
    name: str, num_classes: int | None = None, pretrained: bool | str | os.PathLike | None = None, **overrides: Any
) -> Conformer:
    """Build a Conformer variant, optionally loading weights from ``pretrained``: a file path, or
    True for the variant's published ImageNet-1k weights (fetched once into the torch hub cache,
    ``pretrained.fetch``; ``pretrained_cfg_overlay=dict(file=PATH)`` names a local copy instead).

    ``pretrained`` accepts the authors' checkpoints, mmpretrain's, safetensors files and this
    project's own checkpoints and safetensors exports (layout detected from the keys; see
    ``convert.py``). ``overrides`` are ``ConformerArgs`` fields, e.g. ``drop_path_rate=0.1``, and
    timm's model options (``global_pool``, ``device``, ``dtype``, ``features_only``, ...).

    A file of this project describes its model (``model_args``) and is rebuilt as it says: its
    numerics (``approximate_gelu``, ``same_pad_maxpool``, ``trans_norm_eps``), class count and
    structure, so the model gives the checkpoint's own outputs. What an explicit argument that
    contradicts the file does is ``convert.reconcile_model_args``'s: another structure or variant
    is a CheckpointError, other numerics are used and logged, another ``num_classes`` gets both
    heads re-initialised (transfer learning, logged). Foreign files: the variant's arguments with
    ``overrides``; ``num_classes`` defaults to the file's head count (1000 without a file).
    """
    known = {*ConformerArgs.__dataclass_fields__, *_TIMM_MODEL_KWARGS}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(known)}")
    variant = canonical_name(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return _create_conformer(variant, pretrained=pretrained or False, **overrides)  # type: ignore[return-value]


_TIMM_MODEL_KWARGS = (
    "global_pool",
    "img_size",
    "device",
    "dtype",
    "features_only",
    "out_indices",
    "feature_cls",
    "feature_cfg",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
    "pretrained_model_args",
)
"""timm's options ``create_model`` passes through besides ``ConformerArgs`` fields."""


# ---------------------------------------------------------------------------------------------
# Default cfgs and variants


def _cfg(top1: float | None = None, variant: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """timm's pretrained cfg; a variant with published ImageNet weights (``pretrained.PUBLISHED``)
    gets their URL (the hash prefix in the file name is checked on download) and their top-1."""
    published = PUBLISHED.get(variant or "")
    if published is not None:
        kwargs = {"url": published.url, **kwargs}
        top1 = published.top1
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": ("conv_cls_head", "trans_cls_head"),
        "license": "apache-2.0",
        "paper_ids": "arXiv:2105.03889",
        "paper_name": "Conformer: Local Features Coupling Global Representations for Visual Recognition",
        "origin_url": "https://github.com/pengzhiliang/Conformer",
        "notes": (f"ImageNet-1k top-1 {top1}",) if top1 else (),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "conformer_tiny_patch16": _cfg(variant="conformer_tiny_patch16"),
        "conformer_small_patch16": _cfg(variant="conformer_small_patch16"),
        "conformer_small_patch32": _cfg(variant="conformer_small_patch32"),
        "conformer_base_patch16": _cfg(variant="conformer_base_patch16"),
        "conformer_mini_test": _cfg(None),
    }
)


@register_model
def conformer_tiny_patch16(pretrained: bool | str = False, **kwargs: Any) -> Conformer:
    """Conformer-Ti, patch 16: 23.5 M parameters, 81.3% ImageNet top-1 (the authors' weights)."""
    return _create_conformer("conformer_tiny_patch16", pretrained, **kwargs)


@register_model
def conformer_small_patch16(pretrained: bool | str = False, **kwargs: Any) -> Conformer:
    """Conformer-S, patch 16: 37.7 M parameters, 83.4% ImageNet top-1 (the authors' weights)."""
    return _create_conformer("conformer_small_patch16", pretrained, **kwargs)


@register_model
def conformer_small_patch32(pretrained: bool | str = False, **kwargs: Any) -> Conformer:
    """Conformer-S, patch 32: 38.9 M parameters, 81.96% ImageNet top-1 (mmpretrain's weights)."""
    return _create_conformer("conformer_small_patch32", pretrained, **kwargs)


@register_model
def conformer_base_patch16(pretrained: bool | str = False, **kwargs: Any) -> Conformer:
    """Conformer-B, patch 16: 83.3 M parameters, 84.1% ImageNet top-1 (the authors' weights)."""
    return _create_conformer("conformer_base_patch16", pretrained, **kwargs)


@register_model
def conformer_mini_test(pretrained: bool | str = False, **kwargs: Any) -> Conformer:
    """A 0.36 M-parameter Conformer (embed 32, 2 heads, channel ratio 0.25) for tests and smoke runs;
    the reference test vector's network."""
    return _create_conformer("conformer_mini_test", pretrained, **kwargs)
