"""Generic building blocks used by the Conformer family.

Only what timm does not already provide lives here: a multi-head self-attention whose fused
(``scaled_dot_product_attention``) and explicit (reference) paths are interchangeable, the pre-norm
transformer block built on it, the TensorFlow-style "same"-padded max pool that MindSpore uses, and
the inference fast path of conv -> BatchNorm -> ReLU chains (``fused_conv``: the BatchNorm folded into
the convolution, the ReLU and a residual add fused into it on CPU through oneDNN).
"""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

__all__ = [
    "Attention", "TransformerBlock", "SamePadMaxPool2d", "gelu_layer", "fold_batchnorm", "fused_conv",
    "fast_path_active",
]  # fmt: skip


def gelu_layer(approximate: bool) -> type[nn.Module]:
    """GELU class: exact erf (reference) or the tanh approximation (MindSpore's default)."""
    return partial(nn.GELU, approximate="tanh") if approximate else nn.GELU  # type: ignore[return-value]


class Attention(nn.Module):
    """Multi-head self-attention with a joint ``qkv`` projection (ViT layout).

    ``fused=True`` uses ``F.scaled_dot_product_attention`` (same maths, fewer kernels);
    ``fused=False`` is the explicit softmax(q k^T * scale) v of the reference implementation.
    Setting ``keep_attention`` stores the last attention map (B, heads, N, N) in ``last_attention``
    (forces the explicit path), which the visualisation tools read.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape  # (B, N, C)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if self.fused and not self.keep_attention:
            p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            if self.keep_attention:
                self.last_attention = attn.detach()
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        approximate_gelu: bool = False,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=gelu_layer(approximate_gelu), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SamePadMaxPool2d(nn.Module):
    """Max pool with TensorFlow/MindSpore "same" padding: output = ceil(input / stride),
    extra padding on the bottom/right. Differs from PyTorch's symmetric padding on even sizes.

    The padding is computed from the input size in integer arithmetic on the size itself (no
    ``math.ceil`` / ``max`` on Python numbers), so ``torch.jit.trace`` and the TorchScript ONNX
    exporter record it as shape operations and a traced graph pads every input size correctly
    instead of freezing the example's padding.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size} and {stride}")
        self.kernel_size = kernel_size
        self.stride = stride

    def _pad(self, size: int | torch.Tensor) -> tuple[int | torch.Tensor, int | torch.Tensor]:
        """(before, after) padding of one side of length ``size`` (an int, or a traced size).

        TensorFlow's total is max((ceil(n / s) - 1) * s + k - n, 0). With k >= s the bracket is
        k - s + ((-n) mod s) >= 0, which needs neither ceil nor max; k < s (a pool that skips
        pixels) keeps the general form and is then specialised to the size by a tracer."""
        k, s = self.kernel_size, self.stride
        if k >= s:
            total = (-size) % s + (k - s)
        else:
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad(x.shape[-2])
        left, right = self._pad(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


# ---------------------------------------------------------------------------------------------
# Inference fast path: conv -> BatchNorm (-> + residual) (-> ReLU) as one convolution.

log = logging.getLogger(__name__)
_MKLDNN_FUSION = hasattr(torch.ops.mkldnn, "_convolution_pointwise")  # the op Inductor uses on CPU


def fast_path_active(enabled: bool, training: bool, x: torch.Tensor) -> bool:
    """True when an eval-mode forward may take the folded/fused path: gradients are off (under
    ``torch.no_grad`` or ``torch.inference_mode``), ``x`` is a plain tensor on a real device, and
    nothing is tracing the model (``torch.jit.trace``, ``torch.compile``, ``torch.export`` and ONNX
    export see the plain operators, so graphs and their own fusions stay portable)."""
    return (
        enabled
        and not training
        and not torch.is_grad_enabled()
        and type(x) is torch.Tensor  # not a FakeTensor / functional or proxy tensor of a tracer
        and x.device.type != "meta"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _dispatch_mode_active()  # FlopCounterMode, fake/proxy modes of tracers see plain ops
    )


def _dispatch_mode_active() -> bool:
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:  # pragma: no cover - older/newer torch without it: be conservative
        return True
    return _get_current_dispatch_mode() is not None


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (out, in/groups, kh, kw) and bias (out,) of the one convolution equal to
    ``bn(conv(x))`` with ``bn`` in evaluation mode (running statistics); computed in float32 and
    returned in the convolution's dtype. Nothing in either module is changed."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm needs a BatchNorm with running statistics")
    with torch.no_grad():
        weight = conv.weight.float()
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)  # (out,)
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        bias = -bn.running_mean.float() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.float() * scale
        if bn.bias is not None:
            bias = bias + bn.bias.float()
        folded = weight * scale.reshape(-1, 1, 1, 1)
        return folded.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def _must_run_modules(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> bool:
    """True when the modules themselves must run: hooks on them (or global module hooks) must
    fire, or the BatchNorm is in training mode / has no running statistics to fold."""
    from torch.nn.modules import module as m

    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return True
    if bn is not None and (bn.training or bn.running_mean is None or bn._forward_hooks or bn._forward_pre_hooks):
        return True
    return bool(conv._forward_hooks or conv._forward_pre_hooks)


def _folded_params(
    conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The folded (weight, bias), cached on ``conv`` until any source tensor changes.

    The cache key is each source tensor's storage address and version counter (bumped by every
    in-place update: optimizer steps, ``load_state_dict``, BatchNorm statistics in training), and
    the cache holds aliases of the sources, so a freed storage cannot be reused at the same
    address while its key is alive. The cache is a plain attribute: ``state_dict`` never sees it.
    Inference tensors (a model built under ``torch.inference_mode``) have no version counter, so
    for them nothing is cached: the fold is recomputed on every call (still correct, a little slower).
    """
    sources = [t for t in (conv.weight, conv.bias) if t is not None]
    if bn is not None:
        sources += [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]
    if any(t.is_inference() for t in sources):
        return _fold(conv, bn, channels_last)
    key = (tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources), channels_last)
    cached = conv.__dict__.get("_folded_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.inference_mode(False):  # ordinary tensors, usable outside inference mode
        folded = _fold(conv, bn, channels_last)
        conv.__dict__["_folded_cache"] = (key, folded, [t.detach() for t in sources])
    return folded


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        if bn is None:
            weight, bias = conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach()
        else:
            weight, bias = fold_batchnorm(conv, bn)
        if channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
    return weight, bias


def clear_folded_cache(module: nn.Module) -> None:
    """Drop the folded weights cached by ``fused_conv`` in ``module`` and its children."""
    for m in module.modules():
        m.__dict__.pop("_folded_cache", None)


def _use_mkldnn(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    return (
        _MKLDNN_FUSION
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def fused_conv(
    conv: nn.Conv2d,
    x: torch.Tensor,
    bn: nn.BatchNorm2d | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(bn(conv(x)) + residual)`` for inference (each part optional), (B, Cin, H, W) ->
    (B, Cout, H', W'): the eval-mode BatchNorm folded into the convolution, and on a float32 CPU
    tensor the residual add and ReLU applied inside oneDNN's convolution (one pass over the
    output instead of three). Equal to the unfused modules to float32 rounding. Falls back to the
    plain modules when hooks are registered on them (so hooks always fire) or when the BatchNorm
    itself is in training mode."""
    global _MKLDNN_FUSION
    if _must_run_modules(conv, bn):
        y = conv(x) if bn is None else bn(conv(x))
        y = y if residual is None else y + residual
        return F.relu(y) if relu else y
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    weight, bias = _folded_params(conv, bn, channels_last)
    if _use_mkldnn(x, conv):
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        try:
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "relu" if relu else "none", [], "")
            if relu:
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, weight, bias, *args, "add", None, "relu", [], ""
                )
        except RuntimeError as e:  # an oneDNN build without this fusion: use the portable path from now on
            log.warning("oneDNN conv fusion unavailable (%s); using folded convolutions only", str(e).splitlines()[0])
            _MKLDNN_FUSION = False
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        y += residual
    return F.relu_(y) if relu else y
