"""Multi-process training under ``torchrun``: process group, synchronised BatchNorm, reductions.

``torchrun --nproc_per_node N -m conformer_vision train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
:func:`init_distributed` joins them into one process group (NCCL on GPUs, gloo on CPU). Without
those variables everything here is a no-op for a single process.

torch's ``nn.SyncBatchNorm`` runs on GPUs only; on CPU (gloo) :class:`GlooSyncBatchNorm` computes
the same global-batch statistics with differentiable all-reduces, so a run on N processes with
per-process batch B/N normalises exactly like one process with batch B.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

__all__ = [
    "DistInfo", "init_distributed", "shutdown", "is_distributed", "all_reduce_sum", "barrier",
    "all_gather_objects", "GlooSyncBatchNorm", "convert_sync_batchnorm", "wrap_ddp",
]  # fmt: skip


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

    ``expected_world_size`` (the config's ``device_num``) must equal ``WORLD_SIZE``: the global
    batch, and with it the learning rate, depend on it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if expected_world_size is not None and world != expected_world_size:
        raise ConfigError(
            f"device_num is {expected_world_size} but {world} process(es) were started "
            f"({'torchrun WORLD_SIZE' if 'WORLD_SIZE' in os.environ else 'no torchrun'}); set --device_num {world} "
            "or launch with torchrun --nproc_per_node N (N = device_num)"
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


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the batches of all ranks (any backend, CPU too).

    Mean and variance come from two all-reduces of per-channel sums (two passes, for accuracy);
    ``torch.distributed.nn.functional.all_reduce`` carries the gradients back to every rank.
    Outside training or a process group it is a plain BatchNorm2d; its state dict has the same keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), x.numel() / c, dtype=torch.float32, device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))  # (C+1,)
        n = sums[c]
        mean = sums[:c] / n  # (C,)
        centered = xf - mean.view(1, c, 1, 1)
        var = all_reduce(centered.square().sum(dim=(0, 2, 3))) / n  # biased, (C,)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[operator]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        out = centered * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return out.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d -> synchronised BatchNorm: torch's on CUDA, :class:`GlooSyncBatchNorm` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _swap_batchnorm(model)
    return model


def _swap_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                device=child.weight.device if child.affine else None,
            )  # fmt: skip
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
