"""Multi-process training under ``torchrun``: process group, synchronised BatchNorm, reductions.

``torchrun --nproc_per_node N -m conformer_vision train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`init_distributed` joins them into one process group (NCCL on GPUs, gloo on CPU). Without
those variables everything here is a no-op for a single process.

torch's ``nn.SyncBatchNorm`` runs on GPUs only; on CPU (gloo) :class:`GlooSyncBatchNorm` computes
the same global-batch statistics with differentiable all-reduces, so a run on N processes with
per-process batch B/N normalises like one process with batch B (``sync_bn: true`` uses it in a single
CPU process as well, so the two runs share the arithmetic and agree to float rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown",
    "is_distributed",
    "all_reduce_sum",
    "barrier",
    "all_gather_objects",
    "GlooSyncBatchNorm",
    "convert_sync_batchnorm",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file (checkpoints, logs, metrics)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: torch.device, expected_world_size: int | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    torchrun's ``WORLD_SIZE`` is the number of processes (1 without torchrun). ``expected_world_size``
    (the config's ``device_num``) left at None follows it; a value that was set must equal it, since
    the global batch, and with it the learning rate, depend on it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if expected_world_size is not None and expected_world_size < 1:
        raise ConfigError(
            f"device_num is {expected_world_size}: it must be a count >= 1, or null to follow the "
            "launcher (torchrun's WORLD_SIZE)"
        )
    if expected_world_size is not None and world != expected_world_size:
        launcher = (
            f"torchrun started {world} (WORLD_SIZE)" if "WORLD_SIZE" in os.environ else "1 was started (no torchrun)"
        )
        raise ConfigError(
            f"device_num is {expected_world_size} but {launcher}: the global batch would not be the one the config "
            f"sets; launch with torchrun --nproc_per_node {expected_world_size}, or set --device_num {world} "
            "(or leave device_num unset, null, to follow the launcher)"
        )
    if world == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
    return info


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64); the values themselves for one process."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` (a one-element list for one process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t)
    return t


class _SyncBatchNormFn(torch.autograd.Function):
    """Batch normalisation over the union of every rank's batch, with the fused backward of
    BatchNorm (the formula of torch's CUDA SyncBatchNorm): per-channel sums are accumulated in
    float64 and all-reduced, so the result is as accurate as torch's native CPU BatchNorm."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        stats_out: list[torch.Tensor],
    ) -> torch.Tensor:
        c = x.shape[1]
        xf = x.float()
        local = torch.cat(
            [xf.sum(dim=(0, 2, 3), dtype=torch.float64), xf.new_tensor([x.numel() / c], dtype=torch.float64)]
        )
        total = _sum_over_ranks(local)
        n, mean = total[c], total[:c] / total[c]  # (C,) float64
        centered = xf - mean.float().view(1, c, 1, 1)
        var = _sum_over_ranks(centered.square().sum(dim=(0, 2, 3), dtype=torch.float64)) / n  # biased
        invstd = torch.rsqrt(var + eps).float()  # (C,)
        xhat = centered * invstd.view(1, c, 1, 1)
        out = xhat if weight is None else xhat * weight.float().view(1, c, 1, 1) + bias.float().view(1, c, 1, 1)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n = float(n)
        stats_out.extend([mean, var, n])
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        dyf = dy.float()
        sum_dy = dyf.sum(dim=(0, 2, 3), dtype=torch.float64)  # (C,) this rank's, for the bias
        sum_dy_xhat = (dyf * xhat).sum(dim=(0, 2, 3), dtype=torch.float64)  # (C,) this rank's, for the weight
        total = _sum_over_ranks(torch.cat([sum_dy, sum_dy_xhat]))
        mean_dy, mean_dy_xhat = (total[:c] / ctx.n).float(), (total[c:] / ctx.n).float()
        scale = invstd if weight is None else invstd * weight.float()
        dx = (dyf - mean_dy.view(1, c, 1, 1) - xhat * mean_dy_xhat.view(1, c, 1, 1)) * scale.view(1, c, 1, 1)
        dw = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        return dx.to(dy.dtype), dw, db, None, None


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the batches of all ranks, on any backend (CPU
    and gloo too, where torch's ``nn.SyncBatchNorm`` refuses to run).

    Forward: two all-reduces of per-channel float64 sums (the mean, then the squared deviations);
    backward: one all-reduce of the sums of ``dy`` and ``dy * x_hat``, as in torch's GPU
    SyncBatchNorm. A single process computes the same statistics (no communication), which is what
    makes a 1-process and an N-process run comparable. Outside training it is a plain BatchNorm2d;
    its state dict has the same keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if not self.training:
            return super().forward(x)
        stats: list[torch.Tensor] = []
        out = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps, stats)
        mean, var, n = stats
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[operator]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d -> synchronised BatchNorm: torch's on CUDA (under a process group),
    :class:`GlooSyncBatchNorm` elsewhere (also for one CPU process: the same statistics code)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _swap_batchnorm(model)
    return model


def _swap_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=child.weight.device if child.affine else None,
            )
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            _swap_batchnorm(child)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model`` itself."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
