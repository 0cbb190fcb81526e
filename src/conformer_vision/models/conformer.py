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

Layout of this file (timm order): blocks -> model -> weight loading helpers -> variants.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .layers import SamePadMaxPool2d, TransformerBlock, clear_folded_cache, fast_path_active, fused_conv, gelu_layer

__all__ = ["Conformer", "ConformerArgs", "VARIANTS", "create_model", "list_models", "variant_args"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _bn(channels: int, eps: float = 1e-6) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)


class ConvBlock(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) with an optional injection point.

    ``forward(x, x_t)`` adds ``x_t`` (the FCUUp output) to the input of the 3x3 conv, which
    carries the stride. Returns ``(out, x2)``: the block output (B, out, H/s, W/s) and the
    activated middle map (B, out/4, H/s, W/s) that the FCUDown reads.

    In eval mode without gradients (``fast`` on, the default) each conv -> BatchNorm (-> add)
    -> ReLU chain runs as one convolution with the BatchNorm folded in (``layers.fused_conv``).
    """

    expansion = 4
    fast = True  # the inference fast path; Conformer.set_reference_mode(True) turns it off

    def __init__(self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        med = outplanes // self.expansion
        self.conv1 = nn.Conv2d(inplanes, med, 1, bias=False)
        self.bn1 = _bn(med)
        self.conv2 = nn.Conv2d(med, med, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(med)
        self.conv3 = nn.Conv2d(med, outplanes, 1, bias=False)
        self.bn3 = _bn(outplanes)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
            self.residual_bn = _bn(outplanes)

    def forward(self, x: torch.Tensor, x_t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if fast_path_active(self.fast, self.training, x):
            return self._forward_fused(x, x_t)
        residual = x
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x if x_t is None else x + x_t)
        x2 = F.relu(self.bn2(x))
        x = self.bn3(self.conv3(x2))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return F.relu(x + residual), x2

    def _forward_fused(self, x: torch.Tensor, x_t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for inference: 3 (4 with ``res_conv``) convolutions and one add, nothing else."""
        y = fused_conv(self.conv1, x, self.bn1, relu=True)
        if x_t is not None:
            y += x_t  # y is a fresh tensor: add in place
        x2 = fused_conv(self.conv2, y, self.bn2, relu=True)
        residual = fused_conv(self.residual_conv, x, self.residual_bn) if self.res_conv else x
        return fused_conv(self.conv3, x2, self.bn3, relu=True, residual=residual), x2


class FCUDown(nn.Module):
    """CNN feature map -> patch tokens: 1x1 conv, average pool by ``dw_stride``, LayerNorm, GELU;
    the transformer's class token is re-attached in front.

    Outside reference mode the pooling runs first: a 1x1 convolution and an average pool are both
    linear and commute exactly (bias included), and pooling first makes the convolution
    ``dw_stride``^2 times cheaper (16x in stage 1 of patch-16 models). Same result to rounding.
    """

    def __init__(self, inplanes: int, embed_dim: int, dw_stride: int, approximate_gelu: bool = False) -> None:
        super().__init__()
        self.dw_stride = dw_stride
        self.conv_project = nn.Conv2d(inplanes, embed_dim, 1)
        self.sample_pooling = nn.AvgPool2d(dw_stride, dw_stride)
        self.ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.act = gelu_layer(approximate_gelu)()

    fast = True

    def forward(self, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            x = self.sample_pooling(self.conv_project(x))
        elif fast_path_active(self.fast, self.training, x):
            x = fused_conv(self.conv_project, self.sample_pooling(x))
        else:
            x = self.conv_project(self.sample_pooling(x))
        x = x.flatten(2).transpose(1, 2)  # (B, N, C); a view for channels_last maps
        x = self.act(self.ln(x))
        return torch.cat([x_t[:, :1], x], dim=1)  # (B, N+1, C)


class FCUUp(nn.Module):
    """Patch tokens -> CNN feature map: drop the class token, 1x1 conv, BatchNorm, ReLU, nearest
    upsampling by ``up_stride`` (a scale factor, not a computed size, so ONNX runtimes agree).
    The fast path reads the tokens as a channels_last map (no transpose copy) and folds the BatchNorm."""

    fast = True

    def __init__(self, embed_dim: int, outplanes: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(embed_dim, outplanes, 1)
        self.bn = _bn(outplanes)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, C = x.shape
        if fast_path_active(self.fast, self.training, x):
            x = x[:, 1:].reshape(B, h, w, C).permute(0, 3, 1, 2)  # (B, C, h, w) channels_last view
            x = fused_conv(self.conv_project, x, self.bn, relu=True)
        else:
            x = x[:, 1:].transpose(1, 2).reshape(B, C, h, w)  # (B, C, h, w)
            x = F.relu(self.bn(self.conv_project(x)))
        if self.up_stride == 1:
            return x
        return F.interpolate(x, scale_factor=float(self.up_stride), mode="nearest")


class ConvTransBlock(nn.Module):
    """One coupled stage step: bottleneck -> FCUDown -> transformer block -> FCUUp -> fusion bottleneck."""

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


@dataclass(frozen=True)
class ConformerArgs:
    """Everything needed to rebuild a Conformer; stored in checkpoints as a plain dict."""

    patch_size: int = 16
    channel_ratio: float = 4
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 1000
    in_chans: int = 3
    base_channel: int = 64
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    approximate_gelu: bool = False  # MindSpore numerics: tanh GELU
    same_pad_maxpool: bool = False  # MindSpore numerics: TF "same" max-pool padding
    trans_norm_eps: float = 1e-5  # MindSpore uses 1e-7
    fused_attn: bool = True  # fast path; False = explicit softmax attention (reference mode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Conformer(nn.Module):
    """Conformer classifier. ``forward`` returns the fused logits (B, num_classes): the sum of the
    CNN head and the transformer head, in training and evaluation mode alike.

    Inputs of any size are accepted: height and width are zero-padded (symmetrically; zero is the
    mean colour after normalisation) up to a multiple of ``patch_size``; inputs that are already
    multiples give exactly the reference network's result.

    Fast paths, on by default and equal to the reference maths to float32 rounding (measured in
    docs/benchmarks.md): fused ``scaled_dot_product_attention``; channels_last activations on the
    CPU (oneDNN's faster layout, and the token <-> map reshapes become views); FCUDown pooling
    before its 1x1 convolution (an exact reorder); in eval mode without gradients, every conv ->
    BatchNorm (-> add) -> ReLU chain as one convolution with the BatchNorm folded in (weights
    cached until a parameter changes; ``state_dict`` and training untouched). Tracers
    (``torch.compile``, ``torch.export``, ONNX export, ``torch.jit.trace``) and ``FlopCounterMode``
    see plain operators. ``set_reference_mode(True)`` turns all of them off.
    """

    fast = True  # see set_reference_mode

    def __init__(self, args: ConformerArgs | None = None, **kwargs: Any) -> None:
        super().__init__()
        a = args if args is not None else ConformerArgs(**kwargs)
        if args is not None and kwargs:
            raise TypeError("pass either ConformerArgs or keyword arguments, not both")
        if a.depth % 3 or a.depth < 3:
            raise ValueError(f"depth must be a positive multiple of 3, got {a.depth}")
        if a.patch_size not in (16, 32):
            raise ValueError(f"patch_size must be 16 or 32, got {a.patch_size}")
        self.args = a
        self.num_classes = a.num_classes
        self.patch_size = a.patch_size
        self.embed_dim = self.num_features = a.embed_dim
        stage_ch = [int(a.base_channel * a.channel_ratio * m) for m in (1, 2, 4)]
        self.conv_features = stage_ch[2]
        dpr = torch.linspace(0, a.drop_path_rate, a.depth, device="cpu").tolist()
        block_kwargs = dict(
            num_heads=a.num_heads, mlp_ratio=a.mlp_ratio, qkv_bias=a.qkv_bias, drop=a.drop_rate,
            attn_drop=a.attn_drop_rate, approximate_gelu=a.approximate_gelu, fused_attn=a.fused_attn,
        )  # fmt: skip

        # Stem, shared by both branches: (B, 3, H, W) -> (B, 64, H/4, W/4).
        self.conv1 = nn.Conv2d(a.in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = SamePadMaxPool2d(3, 2) if a.same_pad_maxpool else nn.MaxPool2d(3, 2, 1)

        # Block 1: a plain bottleneck and the first transformer block on patch tokens.
        trans_dw_stride = a.patch_size // 4
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.embed_dim))
        self.conv_1 = ConvBlock(64, stage_ch[0], res_conv=True)
        self.trans_patch_conv = nn.Conv2d(64, a.embed_dim, trans_dw_stride, stride=trans_dw_stride)
        self.trans_1 = TransformerBlock(a.embed_dim, drop_path=dpr[0], **block_kwargs)

        # Blocks 2..depth in three stages; each stage after the first halves the CNN resolution
        # in its first block, and the FCU stride halves with it so token count stays fixed.
        per_stage = a.depth // 3
        index, in_ch = 2, stage_ch[0]
        for stage, out_ch in enumerate(stage_ch):
            for j in range(per_stage - 1 if stage == 0 else per_stage):
                first = stage > 0 and j == 0
                block = ConvTransBlock(
                    in_ch, out_ch, res_conv=first, stride=2 if first else 1,
                    dw_stride=trans_dw_stride >> stage, embed_dim=a.embed_dim, block_kwargs=block_kwargs,
                    drop_path=dpr[index - 1], last_fusion=index == a.depth, approximate_gelu=a.approximate_gelu,
                )  # fmt: skip
                self.add_module(f"conv_trans_{index}", block)
                index, in_ch = index + 1, out_ch

        self.trans_norm = nn.LayerNorm(a.embed_dim, eps=a.trans_norm_eps)
        self.conv_cls_head = nn.Linear(self.conv_features, a.num_classes)
        self.trans_cls_head = nn.Linear(a.embed_dim, a.num_classes)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def blocks(self) -> list[ConvTransBlock]:
        """The coupled blocks ``conv_trans_2 .. conv_trans_{depth}``, in order."""
        return [m for m in self.children() if isinstance(m, ConvTransBlock)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def set_fused_attn(self, enabled: bool) -> None:
        """Switch every attention between the fused kernel and the explicit reference maths."""
        for m in self.modules():
            if hasattr(m, "fused"):
                m.fused = enabled

    def set_reference_mode(self, enabled: bool = True) -> None:
        """``True``: the plain reference maths everywhere (explicit softmax attention, NCHW tensors,
        no BatchNorm folding or fused convolutions), the baseline speed-ups are measured against;
        ``False``: the default fast paths. Both give the same result to float32 rounding."""
        self.set_fused_attn(not enabled)
        for m in self.modules():
            if hasattr(type(m), "fast"):
                m.fast = not enabled
        clear_folded_cache(self)

    @property
    def reference_mode(self) -> bool:
        return not self.fast

    def train(self, mode: bool = True) -> Conformer:
        if mode:  # folded inference weights are stale once training starts: free them
            clear_folded_cache(self)
        return super().train(mode)

    def _use_channels_last(self, x: torch.Tensor) -> bool:
        """channels_last activations on the CPU (measured faster with oneDNN), not under tracers."""
        return (
            self.fast and x.device.type == "cpu" and x.dim() == 4 and type(x) is torch.Tensor
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
        )  # fmt: skip

    def get_classifier(self) -> tuple[nn.Linear, nn.Linear]:
        return self.conv_cls_head, self.trans_cls_head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace both heads with freshly initialised ones for ``num_classes`` outputs."""
        device = self.trans_cls_head.weight.device
        self.num_classes = num_classes
        self.args = ConformerArgs(**{**self.args.to_dict(), "num_classes": num_classes})
        self.conv_cls_head = nn.Linear(self.conv_features, num_classes, device=device)
        self.trans_cls_head = nn.Linear(self.embed_dim, num_classes, device=device)
        for head in self.get_classifier():
            _init_weights(head)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad (B, C, H, W) symmetrically so H and W are multiples of the patch size."""
        p = self.patch_size
        ph, pw = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> CNN feature map (B, C, H/32, W/32) and normalised tokens (B, N+1, D)."""
        x = self.pad_input(x)
        if self._use_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
        fast = fast_path_active(self.fast, self.training, x)
        if fast:
            x_base = self.maxpool(fused_conv(self.conv1, x, self.bn1, relu=True))  # (B, 64, H/4, W/4)
        else:
            x_base = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x, _ = self.conv_1(x_base)
        x_t = fused_conv(self.trans_patch_conv, x_base) if fast else self.trans_patch_conv(x_base)
        x_t = x_t.flatten(2).transpose(1, 2)  # (B, N, D)
        x_t = self.trans_1(torch.cat([self.cls_token.expand(x_t.shape[0], -1, -1), x_t], dim=1))
        for block in self.blocks:
            x, x_t = block(x, x_t)
        return x, self.trans_norm(x_t)

    def forward_head(
        self, features: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False
    ) -> torch.Tensor:
        """Fused logits (B, classes); with ``pre_logits`` the concatenated pooled features (B, C+D)."""
        conv_logits, trans_logits = self._heads(features, pre_logits)
        return torch.cat([conv_logits, trans_logits], 1) if pre_logits else conv_logits + trans_logits

    def _heads(
        self, features: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, x_t = features
        pooled, cls = x.mean(dim=(2, 3)), x_t[:, 0]
        if pre_logits:
            return pooled, cls
        return self.conv_cls_head(pooled), self.trans_cls_head(cls)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both heads' logits ``(conv_logits, trans_logits)``, each (B, classes): what the loss needs."""
        return self._heads(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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


# ---------------------------------------------------------------------------------------------
# Variants

VARIANTS: dict[str, dict[str, Any]] = {
    "conformer_tiny_patch16": dict(patch_size=16, channel_ratio=1, embed_dim=384, num_heads=6),
    "conformer_small_patch16": dict(patch_size=16, channel_ratio=4, embed_dim=384, num_heads=6),
    "conformer_small_patch32": dict(patch_size=32, channel_ratio=4, embed_dim=384, num_heads=6),
    "conformer_base_patch16": dict(patch_size=16, channel_ratio=6, embed_dim=576, num_heads=9),
    # The reference test vector's network: seconds on CPU, for tests and smoke runs.
    "conformer_mini_test": dict(patch_size=16, channel_ratio=0.25, embed_dim=32, num_heads=2),
}

ALIASES = {
    "conformer_tiny": "conformer_tiny_patch16",
    "conformer_small": "conformer_small_patch16",
    "conformer_base": "conformer_base_patch16",
}


def _cfg(top1: float | None = None, **kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "first_conv": "conv1", "classifier": ("conv_cls_head", "trans_cls_head"),
        "license": "apache-2.0", "notes": (f"reference ImageNet top-1 {top1}",) if top1 else (), **kwargs,
    }  # fmt: skip


default_cfgs = generate_default_cfgs(
    {
        "conformer_tiny_patch16": _cfg(81.3),
        "conformer_small_patch16": _cfg(83.4),
        "conformer_small_patch32": _cfg(81.96, input_size=(3, 224, 224)),
        "conformer_base_patch16": _cfg(84.1),
        "conformer_mini_test": _cfg(None),
    }
)


def canonical_name(name: str) -> str:
    """Full variant name for ``name`` or its short alias; ValueError listing the choices otherwise."""
    name = ALIASES.get(name, name)
    if name not in VARIANTS:
        import difflib

        close = difflib.get_close_matches(name, list(VARIANTS) + list(ALIASES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown Conformer variant '{name}'.{hint} Choices: {', '.join(VARIANTS)}")
    return name


def variant_args(name: str, **overrides: Any) -> ConformerArgs:
    """The ``ConformerArgs`` of a named variant with ``overrides`` applied."""
    return ConformerArgs(**{**VARIANTS[canonical_name(name)], **overrides})


def list_models() -> list[str]:
    """Names of the registered Conformer variants."""
    return list(VARIANTS)


_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")


def create_model(
    name: str, num_classes: int | None = None, pretrained: str | None = None, **overrides: Any
) -> Conformer:
    """Build a Conformer variant, optionally loading weights from ``pretrained`` (a file path).

    ``pretrained`` accepts the authors' checkpoints, mmpretrain's, safetensors files and this
    project's own checkpoints and safetensors exports (layout detected from the keys; see
    ``convert.py``). ``overrides`` are ``ConformerArgs`` fields, e.g. ``drop_path_rate=0.1``.

    A file of this project describes its model (``model_args``) and is rebuilt as it says: its
    numerics (``approximate_gelu``, ``same_pad_maxpool``, ``trans_norm_eps``), class count and
    structure, so the model gives the checkpoint's own outputs. What an explicit argument that
    contradicts the file does is ``convert.reconcile_model_args``'s: another structure or variant
    is a CheckpointError, other numerics are used and logged, another ``num_classes`` gets both
    heads re-initialised (transfer learning, logged). Foreign files: the variant's arguments with
    ``overrides``; ``num_classes`` defaults to the file's head count (1000 without a file).
    """
    for key in _TIMM_ONLY_KWARGS:
        overrides.pop(key, None)
    if pretrained is True:
        raise ValueError("no weights are downloaded: pass pretrained=PATH to a checkpoint file")
    device = overrides.pop("device", None)
    unknown = set(overrides) - set(ConformerArgs.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(ConformerArgs.__dataclass_fields__)}")
    variant = canonical_name(name)
    explicit = {**overrides, **({} if num_classes is None else {"num_classes": num_classes})}
    sd = None
    if pretrained:
        from .convert import infer_architecture, read_weights, reconcile_model_args

        sd, meta = read_weights(pretrained)
        if meta.get("model_args") is not None:
            args = reconcile_model_args(meta["model_args"], explicit, str(pretrained), meta.get("arch"), variant)
        else:
            held = infer_architecture(sd).get("num_classes")
            args = variant_args(variant, **{"num_classes": held or 1000, **explicit})
    else:
        args = variant_args(variant, **{"num_classes": 1000, **explicit})
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = Conformer(args)
    model.pretrained_cfg = dict(default_cfgs[variant].default.to_dict())
    model.pretrained_cfg["num_classes"] = args.num_classes
    model.variant = variant
    if sd is not None:
        from .convert import load_state_dict_strict

        load_state_dict_strict(model, sd, source=str(pretrained))
    return model


def _register(name: str) -> Callable[..., Conformer]:
    def factory(pretrained: bool | str = False, **kwargs: Any) -> Conformer:
        return create_model(name, pretrained=pretrained or None, **kwargs)

    factory.__name__ = name
    factory.__qualname__ = name
    factory.__doc__ = f"{name}: {VARIANTS[name]}"
    factory.__module__ = __name__
    return register_model(factory)


for _name in VARIANTS:
    globals()[_name] = _register(_name)
