"""The two-head objective: the mean of one criterion over the conv and transformer heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from conformer_vision.losses import TwoHeadLoss, build_criterion


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)


def test_mean_of_both_heads_cross_entropy(logits) -> None:
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = build_criterion(soft_targets=False, label_smoothing=0.0)(logits, target)
    expected = (F.cross_entropy(logits[0], target) + F.cross_entropy(logits[1], target)) / 2
    torch.testing.assert_close(loss, expected)


def test_label_smoothing_and_soft_targets(logits) -> None:
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    smooth = build_criterion(soft_targets=False, label_smoothing=0.1)
    assert isinstance(smooth.base, LabelSmoothingCrossEntropy)
    torch.testing.assert_close(
        smooth(logits, target),
        (
            F.cross_entropy(logits[0], target, label_smoothing=0.1)
            + F.cross_entropy(logits[1], target, label_smoothing=0.1)
        )
        / 2,
    )
    soft = build_criterion(soft_targets=True, label_smoothing=0.1)  # Mixup already smoothed the targets
    assert isinstance(soft.base, SoftTargetCrossEntropy)
    probs = torch.softmax(torch.randn(6, 5), dim=1)  # (B, K) soft targets
    expected = sum((-probs * F.log_softmax(lg, dim=1)).sum(1).mean() for lg in logits) / 2
    torch.testing.assert_close(soft(logits, probs), expected)


def test_low_precision_logits_are_lifted_to_fp32(logits) -> None:
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = TwoHeadLoss(torch.nn.CrossEntropyLoss())((logits[0].half(), logits[1].bfloat16()), target)
    assert loss.dtype == torch.float32
    loss.backward if loss.requires_grad else None  # noqa: B018 (no graph here; only the dtype matters)
