"""The Conformer variants as data: the arguments that rebuild a network, the named variants and
their aliases. Torch-free, so configuration code can read the tables without importing the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import did_you_mean

__all__ = ["ConformerArgs", "VARIANTS", "ALIASES", "canonical_name", "variant_args", "list_models"]


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
    fused_attn: bool | None = None  # F.scaled_dot_product_attention; None = timm's use_fused_attn()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def canonical_name(name: str) -> str:
    """Full variant name for ``name`` or its short alias; ValueError listing the choices otherwise."""
    name = ALIASES.get(name, name)
    if name not in VARIANTS:
        hint = did_you_mean(name, [*VARIANTS, *ALIASES])
        raise ValueError(f"unknown Conformer variant '{name}' (choices: {', '.join(VARIANTS)}){hint}")
    return name


def variant_args(name: str, **overrides: Any) -> ConformerArgs:
    """The ``ConformerArgs`` of a named variant with ``overrides`` applied."""
    return ConformerArgs(**{**VARIANTS[canonical_name(name)], **overrides})


def list_models() -> list[str]:
    """Names of the registered Conformer variants."""
    return list(VARIANTS)
