"""What the two branches see: feature maps, patch tokens, attention, attention rollout, Grad-CAM.

``visualize_image`` renders one figure for one image and a trained checkpoint:

* the input as the model receives it (preprocessed, then denormalised for display);
* the CNN branch: channel mean of the feature map after the stem bottleneck ``conv_1`` and at the
  end of each stage (outputs of ``conv_trans_{depth/3}``, ``conv_trans_{2 depth/3}``,
  ``conv_trans_{depth}``; ``conv_trans_4/8/12`` for every released variant);
* the transformer branch: patch tokens after ``trans_1`` and the same stage-end blocks, reshaped to
  the patch grid (first principal component, or token norm);
* the class token's attention to the patches in the last block (heads averaged) and the attention
  rollout (Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928) over all transformer blocks;
* Grad-CAM (Selvaraju et al., 2017) of the fused prediction's top class on each branch;
* the top-5 classes with probabilities (fused, and per head).

Everything is read from the model's own modules with forward hooks (attention maps: with the
attention modules' ``fused_attn`` switched off meanwhile, each one's ``attn_drop`` receives its
softmax map); nothing of the network is re-implemented here. Inputs of any size work:
the model zero-pads to a multiple of the patch size, so token grids are (padded H / patch,
padded W / patch) and maps are cropped back to the unpadded image for display.

Notes on the Conformer specifics:

* Rollout: each transformer block's input is ``x_t + FCUDown(x_cnn)``. The CNN term is added token
  by token (patch i only receives the pooled CNN features of its own cell; the class token gets a
  copy of itself), so it mixes no tokens and is folded into the identity (residual) term, like the
  skip connection: rollout = prod_l row_norm(mean_heads(A_l) + I).
* Grad-CAM, CNN branch: the input of the last fusion bottleneck (the output of the last block's
  ``cnn_block``, stride 16), which has the same resolution as the token grid; the stride-32 output
  of the last block is too coarse on small inputs.
* Grad-CAM, transformer branch: the patch tokens entering the last transformer block (the
  class-token head reads only the class token after the last block, so the block's own output
  patch tokens get no gradient from the transformer head; its input tokens reach it through the
  last attention, and the CNN head through the residual path and FCUUp).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models import Conformer
from .models.layers import padding_to_multiple

__all__ = [
    "attention_rollout",
    "grad_cam",
    "tokens_to_grid",
    "tokens_to_map",
    "token_grid",
    "Explanation",
    "explain",
    "render_explanation",
    "visualize_image",
]

log = logging.getLogger("conformer_vision.visualize")

TOKEN_REDUCTIONS = ("pca", "norm")


# ---------------------------------------------------------------------------------------------
# The maths, on plain tensors


def attention_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout through a stack of blocks (Abnar & Zuidema, 2020).

    Each block's attention (B, heads, N, N) is averaged over heads, the identity is added for the
    residual path and rows are re-normalised; the per-block matrices are multiplied from the first
    block to the last: R = A_L ... A_2 A_1. Returns R (B, N, N); every row sums to 1, and row i
    says how much each input token contributes to output token i.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one attention map")
    rollout: torch.Tensor | None = None
    for attn in attentions:
        a = attn.float().mean(dim=1)  # (B, N, N)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout  # type: ignore[return-value]


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: ReLU(sum_c mean_hw(dy/dA_c) * A_c), scaled to [0, 1] per image.

    Args:
        activations: (B, C, h, w) feature maps.
        gradients: (B, C, h, w) gradient of the explained score with respect to them.
    Returns:
        (B, h, w), non-negative, each map divided by its maximum (all zeros when nothing in the
        map supports the class).
    """
    if activations.shape != gradients.shape or activations.dim() != 4:
        shapes = f"{tuple(activations.shape)} and {tuple(gradients.shape)}"
        raise ValueError(f"expected matching (B, C, h, w) tensors, got {shapes}")
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * activations.float()).sum(dim=1))  # (B, h, w)
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / peak[:, None, None]


def tokens_to_grid(tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Patch tokens as a feature map: (B, N+1, D) with the class token first -> (B, D, h, w)."""
    h, w = grid_hw
    B, n, D = tokens.shape
    if n != h * w + 1:
        raise ValueError(f"{n} tokens do not fit a {h}x{w} patch grid plus the class token")
    return tokens[:, 1:].transpose(1, 2).reshape(B, D, h, w)


def tokens_to_map(tokens: torch.Tensor, grid_hw: tuple[int, int], reduce: str = "pca") -> torch.Tensor:
    """One value per patch token, on the patch grid: (B, N+1, D) -> (B, h, w).

    ``reduce='norm'``: the L2 norm of each token. ``reduce='pca'``: each token's coordinate on the
    first principal component of that image's patch tokens; its sign is arbitrary and is fixed so
    the skew is positive (the minority of tokens that stand out get high values).
    """
    grid = tokens_to_grid(tokens.float(), grid_hw)  # (B, D, h, w)
    patches = grid.flatten(2).transpose(1, 2)  # (B, N, D)
    if reduce == "norm":
        values = patches.norm(dim=-1)
    elif reduce == "pca":
        centred = patches - patches.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (B, min(N, D), D)
        values = (centred @ vh[:, 0, :, None]).squeeze(-1)  # (B, N)
        values = values * torch.where((values**3).sum(dim=1, keepdim=True) < 0, -1.0, 1.0)
    else:
        raise ValueError(f"reduce must be one of {TOKEN_REDUCTIONS}, got {reduce!r}")
    return values.reshape(grid.shape[0], *grid_hw)


def token_grid(model: Conformer, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch grid (rows, cols) of an input of ``input_hw`` pixels, after the model's padding."""
    p = model.patch_size
    return -(-input_hw[0] // p), -(-input_hw[1] // p)


# ---------------------------------------------------------------------------------------------
# Running the model with hooks


@dataclass
class Explanation:
    """Everything the figure shows, for one image. Maps are CPU float tensors on their own grid
    (h, w) and cover the padded input; ``padding`` says how to crop them to the image."""

    input: torch.Tensor  # (3, H, W) normalised model input, unpadded
    padding: tuple[int, int, int, int]  # (top, bottom, left, right) zero rows/cols the model adds
    probs: torch.Tensor  # (K,) softmax of the fused logits
    conv_probs: torch.Tensor  # (K,) softmax of the CNN head
    trans_probs: torch.Tensor  # (K,) softmax of the transformer head
    target: int  # class explained by Grad-CAM (fused top-1)
    cnn_maps: dict[str, torch.Tensor]  # module name -> (h, w) channel mean
    cnn_channels: dict[str, int]  # module name -> channels averaged
    token_maps: dict[str, torch.Tensor]  # module name -> (gh, gw)
    cls_attention: torch.Tensor  # (gh, gw) class token -> patches, last block, heads averaged
    rollout: torch.Tensor  # (gh, gw) class-token row of the rollout over all blocks
    cam_cnn: torch.Tensor  # (h16, w16) in [0, 1]
    cam_trans: torch.Tensor  # (gh, gw) in [0, 1]
    num_blocks: int = 12  # transformer blocks in the rollout
    token_reduce: str = "pca"


def _stage_ends(model: Conformer) -> list[tuple[str, nn.Module]]:
    """(name, module) of the stage-end coupled blocks, e.g. conv_trans_4, conv_trans_8, conv_trans_12."""
    per_stage = model.args.depth // 3
    blocks = model.blocks  # conv_trans_2 .. conv_trans_depth
    return [(f"conv_trans_{i}", blocks[i - 2]) for i in (per_stage, 2 * per_stage, 3 * per_stage)]


@contextlib.contextmanager
def _recording(model: Conformer) -> Iterator[dict[str, Any]]:
    """Hooks that store the tensors ``explain`` needs into the yielded dict during a forward pass:
    'cnn' and 'tokens' (name -> tensor), 'cam_cnn' and 'cam_trans' (kept in the autograd graph), and on
    exit 'attentions' (one (B, heads, N, N) map per transformer block, from the explicit softmax path
    the attention modules take meanwhile); hooks and attention switches are restored on exit."""
    rec: dict[str, Any] = {"cnn": {}, "tokens": {}}
    attns = [model.trans_1.attn] + [b.trans_block.attn for b in model.blocks]
    handles = []

    def keep(store: str, name: str, index: int | None) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            rec[store][name] = out if index is None else out[index]

        return hook

    handles.append(model.conv_1.register_forward_hook(keep("cnn", "conv_1", 0)))
    handles.append(model.trans_1.register_forward_hook(keep("tokens", "trans_1", None)))
    for name, block in _stage_ends(model):
        handles.append(block.register_forward_hook(keep("cnn", name, 0)))
        handles.append(block.register_forward_hook(keep("tokens", name, 1)))
    last = model.blocks[-1]
    handles.append(last.cnn_block.register_forward_hook(lambda _m, _i, out: rec.__setitem__("cam_cnn", out[0])))
    handles.append(last.trans_block.register_forward_pre_hook(lambda _m, args: rec.__setitem__("cam_trans", args[0])))
    maps: list[torch.Tensor | None] = [None] * len(attns)

    def keep_map(index: int) -> Any:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
            maps[index] = inp[0].detach()  # the softmax attention map entering attn_drop

        return hook

    previous = [a.fused_attn for a in attns]
    for i, a in enumerate(attns):
        a.fused_attn = False
        handles.append(a.attn_drop.register_forward_hook(keep_map(i)))
    try:
        yield rec
        rec["attentions"] = maps
    finally:
        for h in handles:
            h.remove()
        for a, p in zip(attns, previous):
            a.fused_attn = p


def _padding(model: Conformer, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the model's symmetric zero padding (``Conformer.pad_input``)."""
    left, right, top, bottom = padding_to_multiple(*hw, model.patch_size)
    return top, bottom, left, right


def explain(model: Conformer, image: torch.Tensor, target: int | None = None, token_reduce: str = "pca") -> Explanation:
    """Run ``model`` (eval mode) on one preprocessed image (3, H, W) and collect every map.

    ``target``: the class explained by Grad-CAM; default the fused prediction's top class.
    """
    if image.dim() != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(image.shape)}")
    if token_reduce not in TOKEN_REDUCTIONS:
        raise ConfigError(f"token_reduce must be one of {list(TOKEN_REDUCTIONS)}, got {token_reduce!r}")
    model.eval()
    device = next(model.parameters()).device
    x = image[None].to(device).requires_grad_(True)  # (1, 3, H, W); grad so a frozen model still has a graph
    grid = token_grid(model, tuple(x.shape[-2:]))
    with torch.enable_grad(), _recording(model) as rec:
        conv_logits, trans_logits = model.forward_heads(x)
        fused = conv_logits + trans_logits  # (1, K): what forward() returns
        cls = int(fused[0].argmax()) if target is None else int(target)
        g_cnn, g_trans = torch.autograd.grad(fused[0, cls], [rec["cam_cnn"], rec["cam_trans"]])
    last_attn = rec["attentions"][-1].mean(dim=1)  # (1, N+1, N+1)
    return Explanation(
        input=_cpu(image),
        padding=_padding(model, tuple(x.shape[-2:])),
        probs=_cpu(fused.softmax(-1)[0]),
        conv_probs=_cpu(conv_logits.softmax(-1)[0]),
        trans_probs=_cpu(trans_logits.softmax(-1)[0]),
        target=cls,
        cnn_maps={k: _cpu(v.mean(dim=1)[0]) for k, v in rec["cnn"].items()},
        cnn_channels={k: int(v.shape[1]) for k, v in rec["cnn"].items()},
        token_maps={k: _cpu(tokens_to_map(v.detach(), grid, token_reduce)[0]) for k, v in rec["tokens"].items()},
        cls_attention=_cpu(last_attn[0, 0, 1:].reshape(grid)),
        rollout=_cpu(attention_rollout(rec["attentions"])[0, 0, 1:].reshape(grid)),
        cam_cnn=_cpu(grad_cam(rec["cam_cnn"].detach(), g_cnn)[0]),
        cam_trans=_cpu(grad_cam(tokens_to_grid(rec["cam_trans"].detach(), grid), tokens_to_grid(g_trans, grid))[0]),
        num_blocks=len(rec["attentions"]),
        token_reduce=token_reduce,
    )


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu()


# ---------------------------------------------------------------------------------------------
# The figure


def to_image_space(
    grid_map: torch.Tensor, padding: tuple[int, int, int, int], image_hw: tuple[int, int], smooth: bool
) -> np.ndarray:
    """A map over the padded input (h, w) -> (H, W) over the unpadded image (numpy)."""
    top, bottom, left, right = padding
    padded = (image_hw[0] + top + bottom, image_hw[1] + left + right)
    mode = dict(mode="bilinear", align_corners=False) if smooth else dict(mode="nearest")
    up = F.interpolate(grid_map[None, None].float(), size=padded, **mode)[0, 0]
    return up[top : top + image_hw[0], left : left + image_hw[1]].numpy()


def _denormalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) RGB in [0, 1]."""
    rgb = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return rgb.clamp(0, 1).permute(1, 2, 0).numpy()


def _top_k(exp: Explanation, class_names: list[str], k: int = 5) -> list[tuple[int, str, float]]:
    values, index = exp.probs.topk(min(k, exp.probs.numel()))
    return [(int(i), class_names[int(i)], float(v)) for v, i in zip(values, index)]


def render_explanation(
    exp: Explanation,
    class_names: list[str],
    path: str | Path,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    title: str = "",
) -> Path:
    """Draw ``exp`` as one figure (3 rows x 5 columns) and write it to ``path``."""
    from .plots import new_figure, save_figure

    rgb = _denormalise(exp.input, mean, std)
    hw = rgb.shape[:2]
    grey = rgb.mean(axis=2)
    fig = new_figure(16, 10.5)
    gs = fig.add_gridspec(3, 5)
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(rgb)
    _frame(ax, f"input {hw[0]}x{hw[1]} (preprocessed)")
    _bars(fig.add_subplot(gs[1:, 0]), exp, class_names)

    for col, (name, m) in enumerate(exp.cnn_maps.items(), start=1):
        ax = fig.add_subplot(gs[0, col])
        ax.imshow(to_image_space(m, exp.padding, hw, smooth=False), cmap="viridis")
        _frame(ax, f"CNN {name}: mean of {exp.cnn_channels[name]} ch.\n{m.shape[0]}x{m.shape[1]} grid")
    what = "1st principal comp." if exp.token_reduce == "pca" else "token norm"
    for col, (name, m) in enumerate(exp.token_maps.items(), start=1):
        ax = fig.add_subplot(gs[1, col])
        ax.imshow(to_image_space(m, exp.padding, hw, smooth=False), cmap="magma")
        module = name if name == "trans_1" else f"{name}.trans_block"
        _frame(ax, f"tokens after {module}\n{what}, {m.shape[0]}x{m.shape[1]} patches")
    target = class_names[exp.target]
    overlays = [  # attention is min-max scaled (its values are all close to 1/N); CAMs are in [0, 1]
        (_min_max(exp.cls_attention), "class-token attention, last block\n(heads averaged, min-max scaled)"),
        (_min_max(exp.rollout), f"attention rollout, all {exp.num_blocks} blocks\n(class-token row, min-max scaled)"),
        (exp.cam_cnn, f"Grad-CAM '{target}', CNN branch\n(input of the last fusion block)"),
        (exp.cam_trans, f"Grad-CAM '{target}', transformer\n(patch tokens into the last block)"),
    ]
    for col, (m, label) in enumerate(overlays, start=1):
        ax = fig.add_subplot(gs[2, col])
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        ax.imshow(to_image_space(m, exp.padding, hw, smooth=True), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        _frame(ax, label)
    top = " | ".join(f"{name} {100 * p:.1f}%" for _, name, p in _top_k(exp, class_names))
    fig.suptitle(f"{title}\ntop-5 (fused): {top}" if title else f"top-5 (fused): {top}", fontsize=12)
    return save_figure(fig, path, dpi=80)


def _min_max(m: torch.Tensor) -> torch.Tensor:
    """``m`` scaled to [0, 1] (zeros when constant)."""
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else torch.zeros_like(m)


def _frame(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax: Any, exp: Explanation, class_names: list[str]) -> None:
    """Horizontal bars: the fused top-5 probabilities, with each head's probability of the same class."""
    top = _top_k(exp, class_names)
    y = np.arange(len(top))
    for offset, probs, label in (
        (-0.27, exp.probs, "fused"),
        (0.0, exp.conv_probs, "CNN head"),
        (0.27, exp.trans_probs, "transformer head"),
    ):
        ax.barh(y + offset, [float(probs[i]) for i, _, _ in top], height=0.26, label=label)
    ax.set_yticks(y, [name for _, name, _ in top], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title("top-5 classes", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")


# ---------------------------------------------------------------------------------------------
# The task


def _preprocess(loaded: Any, input_size: tuple[int, int] | None) -> Any:
    """The checkpoint's Preprocess (the model's defaults for foreign files), optionally resized."""
    from .data.transforms import Preprocess

    if loaded.preprocess:
        pre = Preprocess.from_dict(loaded.preprocess)
    else:
        from .runtime import default_preprocess

        pre = default_preprocess(loaded.model)
        log.warning("checkpoint stores no preprocessing; using %s", pre)
    return dataclasses.replace(pre, input_size=tuple(input_size)) if input_size else pre


def visualize_image(
    image: str | Path,
    checkpoint: str | Path,
    output: str | Path = "visualize.png",
    arch: str | None = None,
    device: str = "cpu",
    use_ema: bool = False,
    input_size: tuple[int, int] | None = None,
    token_reduce: str = "pca",
) -> Path:
    """Render the branches' view of ``image`` under the model in ``checkpoint`` to ``output``.

    ``arch`` is needed only for foreign weight files and for ``checkpoint="imagenet"`` (the variant's
    published ImageNet-1k weights, downloaded once); ``input_size`` (H, W) overrides the
    checkpoint's preprocessing size (any size works, e.g. non-square). A model without class names
    whose heads have 1000 outputs is shown with ImageNet-1k's names. Returns the written path.
    """
    from .checkpoint import load_model
    from .data.images import load_rgb
    from .data.transforms import preprocess_image
    from .pretrained import imagenet_class_names, is_imagenet_name, load_published
    from .runtime import resolve_device

    dev = resolve_device(device)
    picture = load_rgb(image)  # fails first, before the (slower) model load
    if is_imagenet_name(checkpoint):
        if use_ema:
            raise ConfigError("--use_ema applies to checkpoints; the published ImageNet weights are one set of weights")
        loaded = load_published(arch)
    else:
        loaded = load_model(checkpoint, arch=arch, use_ema=use_ema)
    pre = _preprocess(loaded, input_size)
    model = loaded.model.to(dev)
    names = loaded.class_names or imagenet_class_names(model.num_classes)
    classes = list(names or [f"class {i}" for i in range(model.num_classes)])
    exp = explain(model, preprocess_image(picture, pre), token_reduce=token_reduce)
    title = f"{Path(image).name}  |  {loaded.arch}{' (EMA)' if use_ema else ''}  |  {Path(checkpoint).name}"
    return render_explanation(exp, classes, output, pre.mean, pre.std, title=title)
