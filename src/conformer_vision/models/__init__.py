"""The Conformer model family (architecture in code), foreign checkpoint conversion and the
inference-optimised copy.

Module dependencies run one way: ``variants`` (torch-free tables) <- ``convert`` (weights files)
<- ``conformer`` (the network, its timm registration) <- ``optimize``.
"""

from .conformer import Conformer, create_model, default_out_indices
from .convert import (
    describe_state_dict,
    extract_state_dict,
    load_pretrained,
    load_state_dict_strict,
    read_weights,
    reconcile_model_args,
)
from .optimize import optimize_for_inference
from .variants import ALIASES, VARIANTS, ConformerArgs, canonical_name, list_models, variant_args

__all__ = [
    "VARIANTS",
    "ALIASES",
    "Conformer",
    "ConformerArgs",
    "canonical_name",
    "create_model",
    "list_models",
    "variant_args",
    "default_out_indices",
    "optimize_for_inference",
    "describe_state_dict",
    "extract_state_dict",
    "load_pretrained",
    "load_state_dict_strict",
    "read_weights",
    "reconcile_model_args",
]
