"""The Hugging Face Hub layout: timm's model folder, written and read with timm's own functions.

A hub folder holds two files, as ``timm.models.save_for_hf`` writes them and as the Hub serves them:

``config.json``
    ``architecture`` (the registered variant, e.g. ``conformer_tiny_patch16``), ``num_classes``,
    ``num_features``, ``global_pool``, ``label_names`` (the class names, index -> name),
    ``model_args`` (the ``ConformerArgs`` that rebuild the network, numerics included:
    ``approximate_gelu``, ``same_pad_maxpool``, ``trans_norm_eps``; timm passes them to the model's
    factory as keyword arguments) and ``pretrained_cfg`` (``input_size``, ``interpolation``,
    ``crop_pct``, ``mean``, ``std``: the preprocessing, plus the variant's license and paper). This
    project adds one key, ``conformer_vision``: the metadata every export carries (format,
    version, arch, model_args, class_names, preprocess), which marks the folder as written here.
``model.safetensors``
    The weights (the model's ``state_dict`` keys), with the same metadata in the safetensors header,
    so the file alone is also a self-describing weights file (``conformer predict --checkpoint
    DIR/model.safetensors``).

Reading: ``timm.create_model("local-dir:DIR", pretrained=True)`` (after ``import conformer_vision``)
rebuilds the model; pushed to the Hub (``huggingface_hub.upload_folder(repo_id="user/repo",
folder_path=DIR)``) the same folder is ``timm.create_model("hf-hub:user/repo", pretrained=True)``.
``load_hub_model`` is that, with this project's checks: the folder must describe a Conformer, what
a caller asks for is reconciled with what the folder records (as for checkpoints: another class
count gets new heads, another structure is an error), and the weights are read by timm's loaders
(safetensors, or ``torch.load(weights_only=True)`` for a ``pytorch_model.bin``) and loaded strictly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

__all__ = [
    "HUB_CONFIG",
    "HUB_WEIGHTS",
    "METADATA_KEY",
    "HubModel",
    "hub_source",
    "is_hub_name",
    "is_hub_folder",
    "read_hub_metadata",
    "check_hub_output",
    "save_hub_folder",
    "load_hub_model",
]

log = logging.getLogger("conformer_vision.hub")

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"
METADATA_KEY = "conformer_vision"
"""The key of this project's metadata in config.json (and the marker of a folder written here)."""

_SOURCES = {"local-dir": "local-dir", "hf-hub": "hf-hub", "hf_hub": "hf-hub"}  # timm's spellings
_WRITTEN = (HUB_CONFIG, HUB_WEIGHTS)
_NOT_ARGS = ("drop_rate", "attn_drop_rate", "drop_path_rate")
"""Training-time rates are not reconstruction arguments (timm leaves them out of model_args too)."""


def hub_source(name: str | os.PathLike) -> tuple[str, str] | None:
    """``("local-dir", folder)`` or ``("hf-hub", "user/repo")`` for timm's model names
    ``local-dir:FOLDER`` / ``hf-hub:user/repo`` (``hf_hub:`` too); None for anything else."""
    text = os.fspath(name)
    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in _SOURCES:
        return None
    if not rest:
        raise ConfigError(
            f"{text!r} names no model after '{prefix}:'; e.g. local-dir:exports/my_model or hf-hub:user/repo"
        )
    return _SOURCES[prefix], rest


def is_hub_name(name: str | os.PathLike) -> bool:
    """``local-dir:...`` or ``hf-hub:...``."""
    return hub_source(name) is not None


def is_hub_folder(path: str | os.PathLike) -> bool:
    """A folder with a config.json: what timm's ``local-dir:`` reads."""
    return Path(path).is_dir() and (Path(path) / HUB_CONFIG).is_file()


def read_hub_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """This project's metadata of a hub folder (``config.json``'s ``conformer_vision``); {} when the
    folder was written by something else (or its config.json is not JSON)."""
    try:
        cfg = json.loads((Path(folder) / HUB_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    meta = cfg.get(METADATA_KEY) if isinstance(cfg, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def check_hub_output(folder: str | os.PathLike, what: str = "--output") -> bool:
    """Check that a hub folder can be written at ``folder`` before any work: a new or empty folder,
    or a hub folder this project wrote (its config.json and model.safetensors are then replaced;
    other files in it, e.g. a README.md added before pushing, stay). Returns True when an existing
    hub folder will be replaced. ConfigError for a file, or a folder holding anything else."""
    from .checkpoint import FORMAT
    from .paths import check_output_dir

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"{what} {path} is a file; the HF_HUB format writes a folder (config.json + "
            "model.safetensors): give a new folder name"
        )
    check_output_dir(path, what)
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if not entries:
        return False
    if read_hub_metadata(path).get("format") != FORMAT:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError(
            f"{what} {path} is a folder that holds files conformer-vision did not write ({shown}); "
            "the HF_HUB export writes into a new or empty folder, or replaces a hub folder it wrote "
            "itself: give another folder"
        )
    return True


def save_hub_folder(model: nn.Module, folder: str | os.PathLike, meta: Mapping[str, Any], preprocess: Any) -> Path:
    """Write ``model`` (a Conformer) as a hub folder at ``folder`` (created; must not exist yet:
    the export writes into a fresh temporary folder and moves the files into place).

    ``meta`` is the export metadata (``export.export_metadata``: arch, model_args, class_names,
    preprocess), ``preprocess`` the ``Preprocess`` recorded as timm's data config. config.json is
    written by timm's ``save_config_for_hf`` (the fields timm reads back), the weights with the
    metadata in the safetensors header."""
    from safetensors.torch import save_file
    from timm.models import resolve_pretrained_cfg
    from timm.models._hub import save_config_for_hf

    path = Path(folder)
    path.mkdir(parents=True)
    arch = str(meta["arch"])
    if not getattr(model, "pretrained_cfg", None):  # a Conformer built directly, not through timm's factory
        model.pretrained_cfg = resolve_pretrained_cfg(arch).to_dict()
    header = {k: json.dumps(v) for k, v in meta.items() if k != "outputs"}
    save_file(
        {k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path / HUB_WEIGHTS), metadata=header
    )
    model_args = {k: v for k, v in dict(meta["model_args"]).items() if k not in _NOT_ARGS and v is not None}
    data_config = {
        "input_size": (3, *preprocess.input_size),
        "interpolation": preprocess.interpolation,
        "crop_pct": preprocess.crop_pct,
        "mean": tuple(preprocess.mean),
        "std": tuple(preprocess.std),
    }
    model_config: dict[str, Any] = {"pretrained_cfg": {"architecture": arch}, METADATA_KEY: dict(meta)}
    if meta.get("class_names"):
        model_config["label_names"] = list(meta["class_names"])
    save_config_for_hf(
        model, str(path / HUB_CONFIG), model_config=model_config, model_args=model_args, data_config=data_config
    )
    return path


@dataclass
class HubModel:
    """A model rebuilt from a hub folder or Hub repository.

    ``class_names``: the folder's ``label_names`` (None when it has none); ``preprocess``: a
    ``Preprocess.to_dict()`` from its metadata or timm's ``pretrained_cfg``; ``num_classes``: the
    class count the folder holds (the model's may differ when new heads were asked for)."""

    model: nn.Module
    arch: str
    class_names: list[str] | None
    preprocess: dict[str, Any]
    num_classes: int


def load_hub_model(
    name: str | os.PathLike, explicit: Mapping[str, Any] | None = None, *, variant: str | None = None
) -> HubModel:
    """Rebuild the Conformer of ``name`` (``local-dir:FOLDER``, a bare folder path, or
    ``hf-hub:user/repo``) with its weights.

    ``explicit``: ``ConformerArgs`` fields the caller sets (``num_classes``, drop rates, numerics),
    reconciled with the folder's ``model_args`` as for this project's checkpoints
    (``models.reconcile_model_args``: another structure is a CheckpointError, other numerics are
    used and logged, another ``num_classes`` gets both heads re-initialised and logged).
    ``variant``: the architecture the caller expects (an error when the folder holds another).
    Raises CheckpointError for a missing or unreadable folder, a non-Conformer architecture, or
    weights that do not fit."""
    import timm

    from .models import ConformerArgs, canonical_name, load_state_dict_strict, reconcile_model_args

    source = hub_source(name) or ("local-dir", os.fspath(name))
    label = f"{source[0]}:{source[1]}"
    pretrained_cfg, arch, stored = _read_config(*source, label)
    try:
        arch = canonical_name(arch)
    except ValueError:
        raise CheckpointError(
            f"{label} holds a timm '{arch}' model, not a Conformer variant; give a hub folder "
            "exported by `conformer export --file_format HF_HUB`"
        ) from None
    stored = {k: v for k, v in stored.items() if k in ConformerArgs.__dataclass_fields__}
    held_classes = int(pretrained_cfg.get("num_classes") or stored.get("num_classes") or 1000)
    stored.setdefault("num_classes", held_classes)
    args = reconcile_model_args(stored, dict(explicit or {}), label, arch, variant)
    kwargs = {k: v for k, v in args.to_dict().items() if v is not None}
    try:
        model = timm.create_model(label, pretrained=False, **kwargs)
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{label}: timm could not build its model ({str(e)[:300]})") from None
    load_state_dict_strict(model, _read_weights(*source, label), source=label)
    names = _label_names(pretrained_cfg.get("label_names"), held_classes)
    return HubModel(
        model=model,
        arch=arch,
        class_names=names,
        preprocess=_preprocess(source, pretrained_cfg),
        num_classes=held_classes,
    )


def _read_config(kind: str, ident: str, label: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(pretrained_cfg, architecture, model_args) of config.json, read by timm's own parser."""
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    if kind == "local-dir":
        folder = Path(ident)
        if not folder.is_dir():
            what = "is a file, not a hub folder" if folder.exists() else "does not exist"
            raise CheckpointError(
                f"{label}: {folder} {what}; give a folder written by "
                "`conformer export --file_format HF_HUB` (config.json + model.safetensors)"
            )
        if not (folder / HUB_CONFIG).is_file():
            present = ", ".join(sorted(p.name for p in folder.iterdir())[:6]) or "nothing"
            raise CheckpointError(
                f"{label}: {folder} is not a hub folder: it has no {HUB_CONFIG} (found: {present}); "
                "give a folder written by `conformer export --file_format HF_HUB`"
            )
    try:
        if kind == "local-dir":
            pretrained_cfg, arch, model_args = load_model_config_from_path(ident)
        else:
            pretrained_cfg, arch, model_args = load_model_config_from_hf(ident)
    except (ValueError, KeyError, TypeError) as e:  # JSON errors are ValueErrors
        raise CheckpointError(
            f"{label}: its {HUB_CONFIG} is not a timm model config ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    except Exception as e:  # the Hub client's own errors: no network, unknown repository, ...
        raise CheckpointError(
            f"{label}: could not read its {HUB_CONFIG} ({type(e).__name__}: {str(e)[:300]})"
            + (
                "; set HF_TOKEN for a private repository, or download it and use local-dir:FOLDER"
                if kind == "hf-hub"
                else ""
            )
        ) from None
    return dict(pretrained_cfg), str(arch), dict(model_args or {})


def _read_weights(kind: str, ident: str, label: str) -> dict[str, torch.Tensor]:
    """The state dict, through timm's loaders: model.safetensors first, else a ``.bin``/``.pth`` read
    with ``torch.load(weights_only=True)``."""
    from timm.models._hub import load_state_dict_from_hf, load_state_dict_from_path

    try:
        if kind == "local-dir":
            sd = load_state_dict_from_path(ident, weights_only=True)
        else:
            sd = load_state_dict_from_hf(ident, weights_only=True)
    except Exception as e:  # no weights file, a truncated one, a pickle that weights_only refuses, the Hub client
        raise CheckpointError(
            f"{label}: could not read its weights ({type(e).__name__}: {str(e)[:300]}); a hub "
            f"folder needs {HUB_WEIGHTS}"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{label}: its weights file does not hold a state dict of tensors")
    return sd


def _label_names(value: Any, count: int) -> list[str] | None:
    """timm's ``label_names``: a list, or a dict index -> name without gaps; None otherwise."""
    if isinstance(value, dict):
        try:
            table = {int(k): str(v) for k, v in value.items()}
        except ValueError:
            return None
        return [table[i] for i in range(count)] if set(table) == set(range(count)) else None
    if isinstance(value, (list, tuple)) and len(value) == count:
        return [str(v) for v in value]
    return None


def _preprocess(source: tuple[str, str], pretrained_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``Preprocess.to_dict()`` of a hub model: this project's metadata in a local folder, else
    timm's data config in ``pretrained_cfg`` (input size, interpolation, crop, mean, std)."""
    from .data.transforms import Preprocess

    if source[0] == "local-dir":
        recorded = read_hub_metadata(source[1]).get("preprocess")
        if recorded:
            return Preprocess.from_dict(recorded).to_dict()
    from .runtime import default_preprocess

    return default_preprocess(pretrained_cfg).to_dict()
