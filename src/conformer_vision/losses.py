"""The Conformer training objective: one criterion applied to each head, averaged.

The reference trains both classifiers with the same criterion and weights them equally: its loss
is each head's criterion divided by the number of heads, i.e. the MEAN of the two cross-entropies
(mmpretrain sums them instead; the mean keeps the loss on the usual cross-entropy scale, so
learning rates carry over from single-head recipes). ``TwoHeadLoss`` wraps any base criterion the
way DeiT's distillation loss wraps its own.

The base criterion follows the targets the data pipeline produces (timm's classes):

- MixUp/CutMix on -> ``SoftTargetCrossEntropy`` (timm's ``Mixup`` already folds label smoothing
  into the soft targets, also after ``mixup_off_epoch``);
- else label smoothing > 0 -> ``LabelSmoothingCrossEntropy``;
- else plain ``nn.CrossEntropyLoss``.
"""

from __future__ import annotations

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

__all__ = ["TwoHeadLoss", "build_criterion"]


class TwoHeadLoss(nn.Module):
    """Mean of ``base`` over the conv head and the transformer head.

    ``forward((conv_logits, trans_logits), target)``: logits (B, K) each; target (B,) class indices
    or (B, K) soft targets, whatever ``base`` takes. Returns a scalar.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        conv_logits, trans_logits = outputs
        # Logits may come out of autocast in fp16/bf16: the loss is always computed in fp32.
        return 0.5 * (self.base(conv_logits.float(), target) + self.base(trans_logits.float(), target))


def build_criterion(*, soft_targets: bool, label_smoothing: float) -> TwoHeadLoss:
    """The two-head loss for the targets the loader produces.

    Args:
        soft_targets: the batches carry (B, K) soft targets (MixUp/CutMix is on).
        label_smoothing: epsilon for hard targets (ignored with soft targets: Mixup applies it).
    """
    if soft_targets:
        base: nn.Module = SoftTargetCrossEntropy()
    elif label_smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return TwoHeadLoss(base)
