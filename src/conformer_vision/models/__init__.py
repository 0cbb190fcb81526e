"""The Conformer model family (architecture in code) and foreign checkpoint conversion."""

from .conformer import VARIANTS, Conformer, ConformerArgs, canonical_name, create_model, list_models, variant_args
from .convert import (
    describe_state_dict, extract_state_dict, load_pretrained, load_state_dict_strict, read_weights, reconcile_model_args,
)  # fmt: skip

__all__ = [
    "VARIANTS", "Conformer", "ConformerArgs", "canonical_name", "create_model", "list_models", "variant_args",
    "describe_state_dict", "extract_state_dict", "load_pretrained", "load_state_dict_strict", "read_weights",
    "reconcile_model_args",
]  # fmt: skip
