"""Foreign checkpoint layouts: the one tested place that maps other codebases' keys to ours.

Layouts understood (detected from the keys, never from the file name):

- ``reference``: the authors' files, ``{'model': sd, 'model_ema': ..., ...}`` or a bare state dict.
  Our parameter names are the reference's, so nothing is renamed.
- ``conformer-vision``: this project's checkpoints (``format == 'conformer-vision'``), and its
  safetensors exports (the same description as JSON strings in the header). They describe the model
  (``arch``, ``model_args``): ``reconcile_model_args`` rebuilds it and says what an explicit
  argument that contradicts the file does (``create_model(pretrained=...)``, ``load_pretrained``).
- ``mmpretrain``: ``{'state_dict': sd}`` with ``backbone.``/``head.`` prefixes and renamed
  transformer norms and MLP (``ln1``, ``ln2``, ``ffn.layers.0.0``, ``ffn.layers.1``).
- ``mindspore``: state dicts with MindSpore names (``conv_trans_blocks.{0..10}``, ``gamma``/``beta``/
  ``moving_mean``/``moving_variance``), e.g. exported to safetensors; build the model with
  ``approximate_gelu=True, same_pad_maxpool=True, trans_norm_eps=1e-7`` for MindSpore numerics.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..serialization import read_checkpoint
from .variants import ALIASES, VARIANTS, ConformerArgs, variant_args

__all__ = [
    "detect_layout",
    "to_reference_keys",
    "extract_state_dict",
    "describe_state_dict",
    "load_pretrained",
    "read_weights",
    "reconcile_model_args",
    "checkpoint_filter_fn",
    "STRUCTURE_FIELDS",
    "NUMERICS_FIELDS",
]

log = logging.getLogger("conformer_vision.models")

_MMPRETRAIN_RENAMES = [
    (re.compile(r"\.ln1\."), ".norm1."),
    (re.compile(r"\.ln2\."), ".norm2."),
    (re.compile(r"\.ffn\.layers\.0\.0\."), ".mlp.fc1."),
    (re.compile(r"\.ffn\.layers\.1\."), ".mlp.fc2."),
]
FORMAT = "conformer-vision"

STRUCTURE_FIELDS = (
    "patch_size",
    "channel_ratio",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "in_chans",
    "base_channel",
)
"""ConformerArgs fields that define the network: a checkpoint's are the only ones its weights fit
(``num_heads`` has no tensor of its own: a different value would load and compute something else)."""
NUMERICS_FIELDS = ("approximate_gelu", "same_pad_maxpool", "trans_norm_eps")
"""Fields that change the outputs of the same weights (MindSpore's numerics): the checkpoint's are
what it was trained with; an explicit different value is honoured with a warning."""
_MINDSPORE_NORMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def detect_layout(sd: dict[str, Any]) -> str:
    """Which key layout a flat state dict uses: 'reference', 'mmpretrain' or 'mindspore'."""
    keys = list(sd)
    if any(k.startswith("backbone.") for k in keys):
        return "mmpretrain"
    if any(k.startswith("conv_trans_blocks.") or k.endswith(".gamma") or k.endswith(".moving_mean") for k in keys):
        return "mindspore"
    return "reference"


def to_reference_keys(sd: dict[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Rename a state dict of any known layout to the reference (= our) parameter names."""
    layout = layout or detect_layout(sd)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if layout == "mmpretrain":
            key = re.sub(r"^(backbone|head)\.", "", key)
            for pattern, repl in _MMPRETRAIN_RENAMES:
                key = pattern.sub(repl, key)
        elif layout == "mindspore":
            key = re.sub(r"^conv_trans_blocks\.(\d+)\.", lambda m: f"conv_trans_{int(m.group(1)) + 2}.", key)
            head, _, leaf = key.rpartition(".")
            key = f"{head}.{_MINDSPORE_NORMS.get(leaf, leaf)}" if head else _MINDSPORE_NORMS.get(leaf, leaf)
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """timm's pretrained-weights hook: a state dict (or checkpoint dict) timm read from a Hub folder,
    URL or given state dict -> the model's key names (every layout ``extract_state_dict`` knows)."""
    return extract_state_dict(state_dict)[0]


def extract_state_dict(obj: Any, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model state dict inside a loaded file, in reference key names, plus the file's metadata.

    Metadata holds ``layout`` and, for this project's checkpoints, ``arch``, ``model_args``,
    ``class_names``, ``preprocess``.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    meta: dict[str, Any] = {}
    if obj.get("format") == "conformer-vision":
        meta = {k: obj.get(k) for k in ("arch", "model_args", "class_names", "preprocess", "config")}
        key = "ema" if use_ema else "model"
        if use_ema and obj.get("ema") is None:
            raise CheckpointError("this checkpoint holds no EMA weights (trained without with_ema)")
        sd, layout = obj[key], "conformer-vision"
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd, layout = obj["state_dict"], None
    elif "model" in obj and isinstance(obj["model"], dict):
        key = "model_ema" if use_ema and isinstance(obj.get("model_ema"), dict) else "model"
        if use_ema and key != "model_ema":
            raise CheckpointError("this checkpoint holds no EMA weights ('model_ema')")
        sd, layout = obj[key], None
    else:
        sd, layout = obj, None
    tensors = {k: v for k, v in sd.items() if torch.is_tensor(v)}
    if not tensors:
        raise CheckpointError("no tensors found: not a model checkpoint")
    layout = layout or detect_layout(tensors)
    meta["layout"] = layout
    return (tensors if layout == "conformer-vision" else to_reference_keys(tensors, layout)), meta


def infer_architecture(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture facts readable from tensor shapes (num_heads cannot be, it is guessed)."""
    facts: dict[str, Any] = {}
    if "cls_token" in sd:
        facts["embed_dim"] = int(sd["cls_token"].shape[-1])
    if "trans_patch_conv.weight" in sd:
        facts["patch_size"] = int(sd["trans_patch_conv.weight"].shape[-1]) * 4
    if "conv_1.conv3.weight" in sd:
        facts["channel_ratio"] = sd["conv_1.conv3.weight"].shape[0] / 64
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"conv_trans_(\d+)\.", k))}
    if blocks:
        facts["depth"] = max(blocks)
    for head in ("conv_cls_head.weight", "trans_cls_head.weight"):
        if head in sd:
            facts["num_classes"] = int(sd[head].shape[0])
    return facts


def describe_state_dict(sd: dict[str, torch.Tensor]) -> str:
    """A one-line description such as 'conformer_tiny_patch16 (embed_dim 384, ...), 1000 classes'."""
    facts = infer_architecture(sd)
    match = [
        name
        for name, v in VARIANTS.items()
        if all(facts.get(k) == v[k] for k in ("embed_dim", "patch_size", "channel_ratio") if k in facts)
    ]
    shape = ", ".join(f"{k} {v}" for k, v in facts.items() if k != "num_classes")
    name = match[0] if len(match) == 1 and len(facts) >= 3 else "an unknown Conformer-like network"
    if not facts:
        name = "no Conformer weights"
    classes = f", {facts['num_classes']} classes" if "num_classes" in facts else ""
    return f"{name} ({shape or 'no recognisable keys'}){classes}"


_HEAD_PREFIXES = ("conv_cls_head.", "trans_cls_head.")


def load_state_dict_strict(
    model: nn.Module, sd: dict[str, torch.Tensor], source: str = "state dict", allow_new_heads: bool = True
) -> bool:
    """Load ``sd`` into ``model`` strictly. Returns True if the heads were re-initialised because
    the file has another number of classes (transfer learning); raises CheckpointError on any other
    mismatch, naming the first missing / unexpected / mis-shaped keys and what the file holds."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if allow_new_heads and unexpected and not any(k.startswith(_HEAD_PREFIXES) for k in own):
        dropped = [k for k in unexpected if k.startswith(_HEAD_PREFIXES)]
        if dropped:  # a model without heads (num_classes=0, timm's feature model): the file's heads are unused
            log.info("%s: the model has no classifier heads: the file's heads are not loaded", source)
            sd = {k: v for k, v in sd.items() if k not in dropped}
            unexpected = [k for k in unexpected if k not in dropped]
    misshaped = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    head_only = bool(misshaped) and all(k.startswith(_HEAD_PREFIXES) for k in misshaped)
    if missing or unexpected or (misshaped and not (head_only and allow_new_heads)):
        lines = [f"{source} does not fit {getattr(model, 'variant', None) or type(model).__name__}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                detail = [
                    f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" if label == "mis-shaped" else k
                    for k in keys[:5]
                ]
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                lines.append(f"  {len(keys)} {label} keys: {', '.join(detail)}{more}")
        lines.append(f"  the file seems to hold {describe_state_dict(sd)}")
        raise CheckpointError("\n".join(lines))
    if misshaped:
        log.warning(
            "%s: its heads have %d classes, the model has %d: loaded everything else and "
            "re-initialised both heads (transfer learning)",
            source,
            sd["conv_cls_head.weight"].shape[0],
            own["conv_cls_head.weight"].shape[0],
        )
        model.load_state_dict({k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}, strict=False)
        return True
    model.load_state_dict(sd, strict=True)
    return False


def read_weights(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict (reference key names) and metadata (``extract_state_dict``) of any weights
    file: this project's checkpoints, its safetensors exports (their header's description is read
    too), the authors', mmpretrain's and plain state dicts. Errors name ``path``."""
    obj = read_checkpoint(path)
    if Path(path).suffix == ".safetensors":
        obj = _safetensors_checkpoint(path, obj)
    try:
        return extract_state_dict(obj, use_ema=use_ema)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _safetensors_checkpoint(path: str | Path, sd: dict[str, Any]) -> dict[str, Any]:
    """A safetensors state dict as a checkpoint dict when its header carries this project's
    description (JSON strings written by ``conformer export --file_format SAFETENSORS``)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    if header.get("format") != json.dumps(FORMAT):
        return sd
    try:
        meta = {k: json.loads(header[k]) for k in ("arch", "model_args", "class_names", "preprocess") if k in header}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its safetensors metadata is not valid JSON ({e})") from None
    return {"format": FORMAT, "config": None, "ema": None, "model": sd, **meta}


def reconcile_model_args(
    stored: dict[str, Any],
    explicit: dict[str, Any],
    source: str,
    stored_arch: str | None = None,
    name: str | None = None,
) -> ConformerArgs:
    """The ConformerArgs of the model a self-describing checkpoint describes (``stored``: its
    ``model_args``; ``stored_arch``: its ``arch``), with the caller's ``explicit`` arguments applied.

    - Structure (``STRUCTURE_FIELDS``): the checkpoint's. The variant ``name`` asked for must be the
      checkpoint's (same name, or the same structure); an explicit structural value that differs
      is a CheckpointError naming both (the weights would not fit, or silently compute another net).
    - Numerics (``NUMERICS_FIELDS``): the checkpoint's unless given; a different explicit value is
      used and logged as an override of what the model was trained with.
    - ``num_classes``: the checkpoint's unless given; another count means new heads (transfer
      learning; ``load_state_dict_strict`` re-initialises and logs them).
    - Training-time options (drop rates, ``fused_attn``): the caller's if given, else the checkpoint's.
    """
    fields = ConformerArgs.__dataclass_fields__
    unknown = sorted(set(stored) - set(fields))
    if unknown:
        raise CheckpointError(
            f"{source}: its model_args hold options this version does not know ({', '.join(unknown)}); "
            "it was written by a newer conformer-vision: upgrade to load it"
        )
    held = ConformerArgs(**stored)
    if name is not None:
        _check_variant(held, stored_arch, name, explicit, source)
    clash = [
        f"{k}={explicit[k]!r} (the file has {getattr(held, k)!r})"
        for k in STRUCTURE_FIELDS
        if k in explicit and explicit[k] != getattr(held, k)
    ]
    if clash:
        verb = "contradicts" if len(clash) == 1 else "contradict"
        raise CheckpointError(
            f"{source} describes its own network; {', '.join(clash)} {verb} it: drop "
            "these options (the file's are used) or use weights trained with them"
        )
    for k in NUMERICS_FIELDS:
        if k in explicit and explicit[k] != getattr(held, k):
            log.warning(
                "%s was trained with %s=%r; using %s=%r as asked (its outputs will differ from the trained model's)",
                source,
                k,
                getattr(held, k),
                k,
                explicit[k],
            )
    return ConformerArgs(**{**held.to_dict(), **explicit})


def _check_variant(
    held: ConformerArgs, stored_arch: str | None, name: str, explicit: dict[str, Any], source: str
) -> None:
    """``name`` must be the checkpoint's variant: the same name (aliases included), or a variant
    whose structure (with the explicit structural options) is the checkpoint's."""
    stored_name = ALIASES.get(stored_arch, stored_arch) if stored_arch else None
    if stored_name is not None and stored_name == ALIASES.get(name, name):
        return
    wanted = variant_args(name, **{k: v for k, v in explicit.items() if k in STRUCTURE_FIELDS})
    differ = [k for k in STRUCTURE_FIELDS if getattr(wanted, k) != getattr(held, k)]
    if not differ:
        return
    have = ", ".join(f"{k} {getattr(held, k)}" for k in differ)
    want = ", ".join(f"{k} {getattr(wanted, k)}" for k in differ)
    label = stored_name or "a Conformer"
    hint = f"ask for {stored_name}" if stored_name in VARIANTS else "ask for the variant it was trained as"
    raise CheckpointError(f"{source} holds {label} ({have}), not {name} ({want}): {hint}, or use weights of {name}")


def load_pretrained(model: nn.Module, path: str | Path, use_ema: bool = False) -> dict[str, Any]:
    """Load weights of any known layout from ``path`` into ``model``; returns the file's metadata
    (plus ``heads_reinitialised``). Always ``weights_only`` loading (see ``read_checkpoint``).

    A self-describing file (``model_args``) is checked against ``model.args`` first
    (``reconcile_model_args``): another structure is an error naming both, other numerics are
    logged (the model keeps its own, as built)."""
    sd, meta = read_weights(path, use_ema=use_ema)
    if meta.get("model_args") is not None and isinstance(getattr(model, "args", None), ConformerArgs):
        own = model.args.to_dict()
        reconcile_model_args(
            meta["model_args"],
            {k: own[k] for k in (*STRUCTURE_FIELDS, *NUMERICS_FIELDS)},
            str(path),
            meta.get("arch"),
            getattr(model, "variant", None),
        )
    file_classes = infer_architecture(sd).get("num_classes")
    meta["heads_reinitialised"] = load_state_dict_strict(model, sd, source=str(path))
    meta["file_num_classes"] = file_classes
    return meta
