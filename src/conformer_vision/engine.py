"""The training and evaluation loops: one optimisation step, one epoch, one evaluation pass.

``train_step`` is the whole numerics of an update: autocast forward of both heads, the two-head
loss, (scaled) backward, unscaling, the global gradient norm, clipping, the optimizer step (skipped
when the gradients are not finite, which also covers a NaN/Inf loss), the loss-scale update and the
EMA update. ``train_one_epoch`` feeds it batches and hands a :class:`StepRecord` to a callback
after every step; the callback (in ``train.py``) logs, checkpoints and decides whether to stop.
``evaluate`` returns the :class:`ClassificationMeter` summary, reduced over all ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from timm.utils import unwrap_model
from torch import nn

from .metrics import ClassificationMeter

__all__ = ["BothHeads", "TrainParts", "StepRecord", "autocast", "train_step", "train_one_epoch", "evaluate"]


class BothHeads(nn.Module):
    """``forward(x) -> (conv_logits, trans_logits)`` of the wrapped Conformer, so DistributedDataParallel
    and ``torch.compile`` see the two-head forward the loss needs (timm's ``unwrap_model`` sees through it)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, 3, H, W) -> 2 x (B, K)
        return self.module.forward_heads(x)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` (fp16/bf16), or nothing for fp32 (``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class TrainParts:
    """Everything one optimisation step touches.

    ``model`` is the training module (``BothHeads``, possibly inside DDP / compile); ``scaler`` is a
    ``torch.amp.GradScaler`` for fp16 or None; ``static_loss_scale`` fixes its scale after every
    step (static loss scaling); ``mixup`` is timm's ``Mixup`` or None, switched off from global step
    ``mixup_off_step`` on; ``clip_grad_norm`` is the max global norm or None.
    """

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    static_loss_scale: float | None = None
    ema: nn.Module | None = None
    mixup: Callable | None = None
    mixup_off_step: int | None = None
    clip_grad_norm: float | None = None
    channels_last: bool = False
    params: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.params:
            self.params = [p for p in self.model.parameters() if p.requires_grad]


@dataclass
class StepRecord:
    """What one step did: ``step`` is the global count of steps done (1-based), ``batch`` the count
    done in this epoch; ``loss`` this rank's loss (a 0-d tensor, possibly non-finite); ``applied``
    False when the update was skipped for non-finite gradients; ``lr`` the rate it used."""

    epoch: int
    step: int
    batch: int
    loss: torch.Tensor
    lr: float
    applied: bool
    grad_norm: float
    batch_size: int


def train_step(parts: TrainParts, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
    """One update on a batch: images (B, 3, H, W), target (B,) or soft (B, K).

    Returns ``(loss, grad_norm, applied)``.
    Under DDP the gradients are averaged over ranks before the norm is taken, so every rank makes
    the same skip decision. A skipped step also leaves the buffers (BatchNorm running statistics)
    as they were: a forward that overflowed would otherwise corrupt them for good.
    """
    buffers = list(parts.model.buffers())
    saved = [b.clone() for b in buffers]
    with autocast(parts.device, parts.amp_dtype):
        outputs = parts.model(images)
    loss = parts.criterion(outputs, target)
    parts.optimizer.zero_grad(set_to_none=True)
    (parts.scaler.scale(loss) if parts.scaler is not None else loss).backward()
    if parts.scaler is not None:
        parts.scaler.unscale_(parts.optimizer)
    grads = [p.grad for p in parts.params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    applied = bool(torch.isfinite(norm))
    if applied and parts.clip_grad_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(parts.params, parts.clip_grad_norm, norm)
    if parts.scaler is not None:
        parts.scaler.step(parts.optimizer)  # skips the update itself when gradients are not finite
        parts.scaler.update(new_scale=parts.static_loss_scale)
    elif applied:
        parts.optimizer.step()
    if not applied:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
    if applied and parts.ema is not None:
        parts.ema.update(unwrap_model(parts.model))
    return loss.detach(), float(norm), applied


def _to_device(parts: TrainParts, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(parts.device, non_blocking=True)
    if parts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(parts.device, non_blocking=True)


def train_one_epoch(
    parts: TrainParts,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch: int,
    step: int,
    start_batch: int = 0,
    on_step: Callable[[StepRecord], bool],
) -> tuple[int, bool]:
    """Train on ``batches`` (the rest of epoch ``epoch`` after ``start_batch`` batches already done),
    continuing from global step ``step``. ``on_step`` runs after every step and returns True to stop.

    Returns ``(global step reached, stopped early)``.
    """
    parts.model.train()
    it: Iterator = iter(batches)
    batch = start_batch
    for images, target in it:
        parts.scheduler.step_update(step)  # the lr of this update is a function of the step alone
        images, target = _to_device(parts, images, target)
        if parts.mixup is not None:
            parts.mixup.mixup_enabled = parts.mixup_off_step is None or step < parts.mixup_off_step
            images, target = parts.mixup(images, target)
        lr = float(parts.optimizer.param_groups[0]["lr"])
        loss, norm, applied = train_step(parts, images, target)
        step, batch = step + 1, batch + 1
        record = StepRecord(epoch, step, batch, loss, lr, applied, norm, int(images.shape[0]))
        if on_step(record):
            return step, True
    return step, False


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Loss / top-1 / top-5 of the fused prediction and of each head over ``loader``
    (:meth:`ClassificationMeter.summary`), summed over all ranks when distributed."""
    bare = unwrap_model(model)
    was_training = bare.training
    bare.eval()
    meter = ClassificationMeter(num_classes)
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            conv_logits, trans_logits = bare.forward_heads(images)
        meter.update(conv_logits, trans_logits, target)
    meter.all_reduce()
    bare.train(was_training)
    return meter.summary()
