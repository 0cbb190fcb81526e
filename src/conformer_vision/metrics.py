"""Classification metrics shared by training-time validation, ``conformer eval`` and ONNX eval.

One ``ClassificationMeter`` accumulates, over batches, the loss and top-1/top-5 accuracy of the
fused prediction and of each head, plus a confusion matrix of the fused top-1, so every path
(PyTorch module, onnxruntime session, distributed ranks) reports the same numbers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["topk_correct", "ClassificationMeter"]

HEADS = ("fused", "conv", "trans")


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hits = top.eq(target[:, None])
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


@dataclass
class ClassificationMeter:
    """Running sums for loss, top-1 and top-5 per head; ``summary()`` turns them into rates.

    ``update`` takes the heads' logits (B, classes) and integer targets (B,). Losses are plain
    cross entropy of each output (the fused one on the summed logits), averaged over samples.
    """

    num_classes: int
    count: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    confusion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # per head: [loss_sum, top1, top5], float64 so sums over 50k samples stay exact enough
        self.sums = {h: torch.zeros(3, dtype=torch.float64) for h in HEADS}
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, conv_logits: torch.Tensor, trans_logits: torch.Tensor, target: torch.Tensor) -> None:
        conv_logits, trans_logits = conv_logits.float().cpu(), trans_logits.float().cpu()
        target = target.cpu().long()
        outputs = {"fused": conv_logits + trans_logits, "conv": conv_logits, "trans": trans_logits}
        for head, logits in outputs.items():
            loss = F.cross_entropy(logits, target, reduction="sum")
            top1, top5 = topk_correct(logits, target)
            self.sums[head] += torch.tensor([float(loss), top1, top5], dtype=torch.float64)
        pred = outputs["fused"].argmax(1)
        self.confusion += torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )
        self.count += int(target.numel())

    def all_reduce(self) -> None:
        """Sum the counts of every rank (call on all ranks before ``summary``)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        flat = torch.cat([self.sums[h] for h in HEADS] + [torch.tensor([self.count], dtype=torch.float64)])
        flat = torch.cat([flat, self.confusion.flatten().double()])
        dist.all_reduce(flat)
        n = 3 * len(HEADS)
        for i, head in enumerate(HEADS):
            self.sums[head] = flat[3 * i : 3 * i + 3].clone()
        self.count = int(flat[n])
        self.confusion = flat[n + 1 :].round().long().reshape(self.num_classes, self.num_classes)

    def summary(self) -> dict[str, float]:
        """``{'Loss', 'Top1-Acc', 'Top5-Acc'}`` of the fused prediction (the specification's names),
        plus ``conv_loss``, ``conv_top1``, ``conv_top5``, ``trans_*`` and ``num_samples``."""
        n = max(self.count, 1)
        out: dict[str, float] = {}
        for head in HEADS:
            loss, top1, top5 = (self.sums[head] / n).tolist()
            if head == "fused":
                out.update({"Loss": loss, "Top1-Acc": top1, "Top5-Acc": top5})
            else:
                out.update({f"{head}_loss": loss, f"{head}_top1": top1, f"{head}_top5": top5})
        out["num_samples"] = float(self.count)
        return out

    def per_class_accuracy(self) -> list[float]:
        """Fused top-1 per true class (NaN for a class without samples)."""
        assert self.confusion is not None
        totals = self.confusion.sum(1).double()
        return (self.confusion.diag().double() / totals).tolist()
