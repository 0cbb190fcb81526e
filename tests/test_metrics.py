"""The shared metric arithmetic."""

import math

import torch

from conformer_vision.metrics import ClassificationMeter, topk_correct


def test_topk_correct_caps_k_at_num_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert topk_correct(logits, torch.tensor([1, 2])) == [1, 2]


def test_meter_summary_heads_and_confusion():
    meter = ClassificationMeter(num_classes=3)
    conv = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    trans = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    meter.update(conv, trans, torch.tensor([0, 1]))
    s = meter.summary()
    assert s["num_samples"] == 2
    assert s["conv_top1"] == 1.0 and s["trans_top1"] == 0.0
    assert s["Top1-Acc"] == 0.5  # fused: [2,0,1] -> 0 correct; [0,2,3] -> 2 wrong
    expected_loss = torch.nn.functional.cross_entropy(conv + trans, torch.tensor([0, 1])).item()
    assert math.isclose(s["Loss"], expected_loss, rel_tol=1e-6)
    assert meter.confusion.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    acc = meter.per_class_accuracy()
    assert acc[:2] == [1.0, 0.0] and math.isnan(acc[2])
