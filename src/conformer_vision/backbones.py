"""Conformer as a detection / segmentation backbone: the CNN branch's feature pyramid behind an FPN.

``conformer_fpn_backbone("conformer_tiny_patch16")`` returns a module that torchvision's detectors
(``FasterRCNN``, ``MaskRCNN``, ``RetinaNet``, ``FCOS``, ``KeypointRCNN``) take as ``backbone``: it maps
images (B, 3, H, W) to an ``OrderedDict`` of FPN maps ``"0", "1", ...`` (one per returned level, then
``"pool"`` from ``LastLevelMaxPool``), all with ``out_channels`` channels, like torchvision's own
``resnet_fpn_backbone``. The features come from timm's ``features_only`` model of the variant (what
the Conformer model contract provides: by default the CNN maps after blocks 4, 8, 11 and 12 at
strides 4, 8, 16, 32, the four the authors feed to their FPN in Peng et al., Conformer, detection
with Faster / Mask R-CNN); the pyramid is torchvision's ``FeaturePyramidNetwork``.

Stages, counted like torchvision's ``resnet_fpn_backbone`` counts ``conv1, layer1 .. layer4``, so
``trainable_layers=k`` trains the top k of them and freezes the rest (depth 12; with depth d the
blocks per stage are d/3):

    stage 0  stem:    conv1, bn1                                   (stride 4, shared by both branches)
    stage 1  blocks 1-4:  conv_1, trans_patch_conv, trans_1, cls_token, conv_trans_2 .. 4   (stride 4)
    stage 2  blocks 5-8:  conv_trans_5 .. 8                        (stride 8)
    stage 3  blocks 9-11: conv_trans_9 .. 11                       (stride 16)
    stage 4  block 12:    conv_trans_12 (its fusion block halves the map: stride 32), and trans_norm
                          (the LayerNorm of the token map, when that map is returned)

A Conformer block holds both branches, so freezing a stage freezes its transformer blocks too.
The authors' detection backbone freezes the stem only (``frozen_stages=1``), i.e. ``trainable_layers=4``.

``norm_eval=True`` (the authors' detection configs, and mmdetection's ``norm_eval``) keeps every
BatchNorm of the backbone in eval mode while the detector trains: running statistics stay those of
the classification weights (detection batches are small). BatchNorm affine parameters stay
trainable as in the authors' code unless ``freeze_norm_affine=True`` (what torchvision's
``FrozenBatchNorm2d`` does for its ResNets). BatchNorms of frozen stages are always in eval mode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from .errors import ConfigError
from .finetune import NUM_STAGES, stage_of

__all__ = ["ConformerFPN", "NUM_STAGES", "conformer_fpn_backbone", "conformer_features", "stage_of"]


def conformer_features(
    variant: str, weights: str | Path | None = None, out_indices: Sequence[int] | None = None, **model_kwargs: Any
) -> nn.Module:
    """timm's ``features_only`` model of a Conformer variant: ``model(x)`` is a list of NCHW maps,
    ``model.feature_info`` their channels / reductions / module names.

    Args:
        variant: a Conformer variant (``conformer_tiny_patch16``, ...; aliases work).
        weights: a classification checkpoint to start from: the authors' ``Conformer_*.pth``,
            mmpretrain's, a safetensors file or one of this project's checkpoints (heads are dropped).
        out_indices: which maps to return, as timm's ``features_only`` takes them; None = the
            four the authors use (after blocks 4, 8, 11, 12).
        model_kwargs: model options (``drop_path_rate``, ...) passed to ``timm.create_model``.
    """
    import timm

    import conformer_vision  # noqa: F401  (registers the conformer_* variants in timm)

    from .models import canonical_name

    try:
        variant = canonical_name(variant)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    kwargs: dict[str, Any] = dict(model_kwargs, features_only=True)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if weights is not None:
        if not Path(weights).is_file():
            raise ConfigError(f"backbone weights {weights} not found; pass the path of a classification checkpoint")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    return timm.create_model(variant, **kwargs)


class ConformerFPN(nn.Module):
    """A Conformer feature model with torchvision's FPN on top: what torchvision's detectors take.

    ``forward(images (B, 3, H, W)) -> OrderedDict[str, (B, out_channels, h_i, w_i)]`` with keys
    ``"0" .. str(n-1)`` for the n returned maps (finest first) and the extra blocks' maps after
    them (``"pool"`` for ``LastLevelMaxPool``). Any input size the model takes works; torchvision's
    detectors pad batches to multiples of 32, so the model's own padding to the patch size never
    shifts the grid there.

    Attributes:
        body: the ``features_only`` model; ``body.feature_info`` describes the maps.
        fpn: ``torchvision.ops.FeaturePyramidNetwork``.
        out_channels: channels of every output map (what detectors read).
        norm_eval, freeze_norm_affine, trainable_layers: see :func:`conformer_fpn_backbone`.
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int = 256,
        trainable_layers: int = NUM_STAGES,
        norm_eval: bool = True,
        freeze_norm_affine: bool = False,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        depth: int = 12,
    ) -> None:
        super().__init__()
        if not 0 <= trainable_layers <= NUM_STAGES:
            raise ConfigError(f"trainable_layers must be in 0..{NUM_STAGES} (stem + 4 stages), got {trainable_layers}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=list(body.feature_info.channels()),
            out_channels=out_channels,
            extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels
        self.trainable_layers = trainable_layers
        self.norm_eval = norm_eval
        self.freeze_norm_affine = freeze_norm_affine
        self.depth = depth
        self._frozen_norms = self._freeze(trainable_layers, freeze_norm_affine)
        self.train(self.training)

    def _freeze(self, trainable_layers: int, freeze_norm_affine: bool) -> list[nn.Module]:
        """Stop gradients of the frozen stages (and of all BatchNorm affines when asked); returns the
        BatchNorms that must stay in eval mode whatever ``norm_eval`` says (those of frozen stages)."""
        first_trainable = NUM_STAGES - trainable_layers
        for name, param in self.body.named_parameters():
            stage = stage_of(name, self.depth)
            if stage is not None and stage < first_trainable:
                param.requires_grad_(False)
        frozen_norms = []
        for name, module in self.body.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                stage = stage_of(name, self.depth)
                if freeze_norm_affine:
                    module.requires_grad_(False)
                if stage is not None and stage < first_trainable:
                    frozen_norms.append(module)
        return frozen_norms

    def train(self, mode: bool = True) -> ConformerFPN:
        """Train mode for everything except the backbone's BatchNorms under ``norm_eval`` and those
        of frozen stages, which keep their running statistics (eval mode)."""
        super().train(mode)
        if mode:
            norms = (m for m in self.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
            for module in norms if self.norm_eval else self._frozen_norms:
                module.eval()
        return self

    @property
    def feature_info(self) -> Any:
        """The body's timm ``FeatureInfo``: channels, reductions (strides) and module names."""
        return self.body.feature_info

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def conformer_fpn_backbone(
    variant: str,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    norm_eval: bool | None = None,
    freeze_norm_affine: bool = False,
    extra_blocks: ExtraFPNBlock | None = None,
    norm_layer: Callable[..., nn.Module] | None = None,
    **model_kwargs: Any,
) -> ConformerFPN:
    """A Conformer variant as a torchvision detection backbone with an FPN (see ``ConformerFPN``).

    Args:
        variant: ``conformer_tiny_patch16``, ``conformer_small_patch16``, ``conformer_small_patch32``,
            ``conformer_base_patch16`` or ``conformer_mini_test`` (aliases work).
        weights: a classification checkpoint (the authors', mmpretrain's, safetensors or this
            project's) loaded into the backbone; None = random initialisation.
        trainable_layers: how many stages, counted from the top, train (0..5; see the module
            docstring for the mapping). None: 4 with ``weights`` (the stem frozen, as the authors'
            ``frozen_stages=1``), 5 without (freezing random layers helps nothing).
        out_indices: the maps to return, as timm's ``features_only`` takes them; None = the
            authors' four (after blocks 4, 8, 11, 12; strides 4, 8, 16, 32).
        out_channels: channels of the FPN maps (torchvision's and the authors' detectors use 256).
        norm_eval: BatchNorms in eval mode while training (running statistics frozen). None: True
            with ``weights`` (the authors' configs), False without (random statistics are not
            worth keeping).
        freeze_norm_affine: also stop BatchNorm affine parameters (torchvision's FrozenBatchNorm2d).
        extra_blocks: extra FPN levels; default ``LastLevelMaxPool`` (the "pool" map, stride 64 with
            the default maps), as ``resnet_fpn_backbone``. ``LastLevelP6P7`` for RetinaNet/FCOS.
        norm_layer: normalisation inside the FPN (None, as torchvision's default).
        model_kwargs: model options passed to ``timm.create_model`` (``drop_path_rate``, ...).
    """
    pretrained = weights is not None
    trainable_layers = (4 if pretrained else NUM_STAGES) if trainable_layers is None else trainable_layers
    norm_eval = pretrained if norm_eval is None else norm_eval
    body = conformer_features(variant, weights, out_indices, **model_kwargs)
    depth = model_kwargs.get("depth", 12)
    return ConformerFPN(
        body, out_channels, trainable_layers, norm_eval, freeze_norm_affine, extra_blocks, norm_layer, depth
    )
