"""Model cost: parameter counts and FLOPs (``torch.utils.flop_counter``), on the meta device."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .conformer import create_model, default_cfgs
from .variants import list_models

__all__ = ["count_params", "count_flops", "variants_table"]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(
    model: torch.nn.Module, image_size: tuple[int, int] = (224, 224), batch: int = 1, backward: bool = False
) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2) measured by torch.utils.flop_counter;
    with ``backward``, of a training step's forward and backward passes (the gradient of the summed
    logits: the backward's matrix products do not depend on the loss). Counted in the model's
    current train/eval mode; on the meta device nothing is computed."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, 3, *image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
        out = model(x)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def variants_table(image_size: int = 224, num_classes: int = 1000) -> str:
    """A Markdown table: variant, params, GFLOPs per image (of the reference network's operations,
    comparable with published counts; ``optimize_for_inference`` runs ~1.5% fewer), reference top-1."""
    rows = ["| variant | params | GFLOPs (torch.utils.flop_counter) | reference top-1 |", "|---|---:|---:|---:|"]
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes).eval()
        model.set_fused_attn(False)  # explicit attention: the counter does not see the fused CPU kernel
        notes = default_cfgs[name].default.notes
        top1 = notes[0].rsplit(" ", 1)[-1] if notes else "-"
        gflops = count_flops(model, (image_size, image_size)) / 1e9
        rows.append(f"| {name} | {count_params(model):,} | {gflops:.2f} | {top1} |")
    return "\n".join(rows)
