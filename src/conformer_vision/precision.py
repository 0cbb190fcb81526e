"""The mixed-precision vocabulary every command shares (``--amp_level``).

One table, torch-free so the configuration can list it: each name says which dtype autocast runs
in and whether training scales the loss. The specification's levels ``O0``..``O3`` sit beside
the dtype names: ``O0``/``fp32``/``float32`` run in float32; ``O1``/``O2``/``O3``/``fp16``/
``float16`` run float16 autocast with loss scaling (MindSpore's O3 casts the whole network, which
trains unstably without float32 master weights; autocast with scaling is PyTorch's equivalent);
``bf16``/``bfloat16`` run bfloat16 autocast, whose range needs no loss scaling.
``runtime.AMP_DTYPES`` turns the names into ``torch.dtype`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, did_you_mean

__all__ = ["AmpLevel", "AMP_LEVELS", "amp_level", "AMP_HELP"]


@dataclass(frozen=True)
class AmpLevel:
    """What one ``amp_level`` name means."""

    dtype: str | None  # the torch dtype autocast runs in (``float16``, ``bfloat16``); None = float32, no autocast
    loss_scaling: bool  # training multiplies the loss (GradScaler or a fixed loss_scale): float16's narrow range
    short: str  # fp32, fp16 or bf16: how results and benchmark tables name it


_FP32 = AmpLevel(None, False, "fp32")
_FP16 = AmpLevel("float16", True, "fp16")
_BF16 = AmpLevel("bfloat16", False, "bf16")

AMP_LEVELS: dict[str, AmpLevel] = {
    "O0": _FP32,
    "O1": _FP16,
    "O2": _FP16,
    "O3": _FP16,
    "bf16": _BF16,
    "fp16": _FP16,
    "fp32": _FP32,
    "bfloat16": _BF16,
    "float16": _FP16,
    "float32": _FP32,
}
"""Every accepted name (matched case-insensitively) -> its meaning; the keys are the canonical spellings."""

AMP_HELP = (
    "O0/fp32/float32 float32 (default); O1/O2/O3/fp16/float16 float16 autocast (training: with loss scaling); "
    "bf16/bfloat16 bfloat16 autocast"
)
"""The vocabulary in one line, for the commands' ``--help``."""


def amp_level(name: str) -> str:
    """The canonical spelling of the ``amp_level`` ``name`` (``o1`` -> ``O1``, ``BF16`` -> ``bf16``);
    ConfigError naming the valid names (and the closest one) otherwise. Used as argparse's ``type``."""
    table = {n.lower(): n for n in AMP_LEVELS}
    found = table.get(str(name).strip().lower())
    if found is None:
        hint = did_you_mean(name, AMP_LEVELS)
        raise ConfigError(f"amp_level {name!r} is not a precision; use one of {', '.join(AMP_LEVELS)}{hint}")
    return found
