"""Generic building blocks used by the Conformer family.

Only what timm does not already provide lives here: a multi-head self-attention whose fused
(``scaled_dot_product_attention``) and explicit (reference) paths are interchangeable, the pre-norm
transformer block built on it, and the TensorFlow-style "same"-padded max pool that MindSpore uses.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

__all__ = ["Attention", "TransformerBlock", "SamePadMaxPool2d", "gelu_layer"]


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
    extra padding on the bottom/right. Differs from PyTorch's symmetric padding on even sizes."""

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pad(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad(x.shape[-2])
        left, right = self._pad(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)
