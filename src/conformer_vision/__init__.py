"""conformer-vision: Conformer image classifiers (Peng et al., ICCV 2021) in PyTorch.

``create_model`` and ``list_models`` are the model API, ``optimize_for_inference`` the faster
inference copy of a model; importing the package also registers the variants in timm's registry,
so ``timm.create_model("conformer_tiny_patch16")`` (``features_only=True`` too) works.
"""

try:
    from .models import Conformer, ConformerArgs, create_model, list_models, optimize_for_inference
except KeyboardInterrupt:  # Ctrl-C while torch loads: the `conformer` command exits 130 in one line
    from .cli import exit_if_interrupted_command

    exit_if_interrupted_command()
    raise

__version__ = "0.1.0"
__all__ = ["Conformer", "ConformerArgs", "create_model", "list_models", "optimize_for_inference", "__version__"]
