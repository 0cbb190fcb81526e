"""Generic building blocks used by the Conformer family.

Only what timm does not already provide lives here: a multi-head self-attention with timm's
``fused_attn`` switch (``F.scaled_dot_product_attention`` or the explicit softmax of the reference),
the pre-norm transformer block built on it, the TensorFlow-style "same"-padded max pool that
MindSpore uses, and the zero padding to a multiple of the patch size.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function, use_fused_attn
from torch import nn

__all__ = ["Attention", "TransformerBlock", "SamePadMaxPool2d", "gelu_layer", "pad_to_multiple", "padding_to_multiple"]


def gelu_layer(approximate: bool) -> type[nn.Module]:
    """GELU class: exact erf (reference) or the tanh approximation (MindSpore's default)."""
    return partial(nn.GELU, approximate="tanh") if approximate else nn.GELU  # type: ignore[return-value]


def padding_to_multiple(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom), ``F.pad``'s order: the symmetric zero padding that makes height
    and width multiples of ``multiple``, the extra pixel at the bottom/right."""
    ph, pw = (-height) % multiple, (-width) % multiple
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


@register_notrace_function  # FX: a leaf call, so the size test below stays a Python branch
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) symmetrically (``padding_to_multiple``) so that H and W are multiples
    of ``multiple``; ``x`` itself when they already are."""
    if x.shape[-2] % multiple == 0 and x.shape[-1] % multiple == 0:
        return x
    return F.pad(x, padding_to_multiple(x.shape[-2], x.shape[-1], multiple))


class Attention(nn.Module):
    """Multi-head self-attention with a joint ``qkv`` projection (ViT layout).

    ``fused_attn=True`` uses ``F.scaled_dot_product_attention`` (same maths, fewer kernels);
    ``False`` is the explicit softmax(q k^T * scale) v of the reference implementation, where
    ``attn_drop`` receives the attention map (B, heads, N, N): a forward hook on it reads the map
    (``visualize`` does). None follows timm's ``use_fused_attn()`` (on, unless timm's exportable
    layer config or ``TIMM_FUSED_ATTN=0`` turns it off). ``fused_attn`` is a plain attribute.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape  # (B, N, C)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
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
        fused_attn: bool | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, fused_attn=fused_attn)
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
    ``math.ceil`` / ``max`` on Python numbers where k >= s), so ``torch.jit.trace`` and the
    TorchScript ONNX exporter record it as shape operations and a traced graph pads every input
    size correctly instead of freezing the example's padding.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size} and {stride}")
        self.kernel_size = kernel_size
        self.stride = stride

    def _pad(self, size: int) -> tuple[int, int]:
        """(before, after) padding of one side of length ``size`` (an int, or a traced size).

        TensorFlow's total is max((ceil(n / s) - 1) * s + k - n, 0). With k >= s the bracket is
        k - s + ((-n) mod s) >= 0, which needs neither ceil nor max; k < s (a pool that skips
        pixels) keeps the general form and is then specialised to the size by a tracer."""
        k, s = self.kernel_size, self.stride
        if k >= s:
            total = (s - size % s) % s + (k - s)
        else:
            total = max(((size + s - 1) // s - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad(x.shape[-2])
        left, right = self._pad(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)
