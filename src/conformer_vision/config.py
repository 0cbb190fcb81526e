"""The typed, strict run configuration.

One flat dataclass field per option of the specification's YAML (the MindSpore Conformer README,
"Script Parameters"), under the same names and with the same defaults except where noted in
``docs/options.md``, plus a few options the PyTorch port needs (resume path, output-directory
policy, augmentation master switch, ...).

Options come from a YAML file and from ``--key value`` command-line tokens (the command line wins).
A few names other codebases use are true aliases (:data:`OPTION_ALIASES`: ``lr`` for ``base_lr``,
...), accepted alike in YAML and on the command line and stored under the canonical name.
Everything is checked before any data or model work: unknown keys get a "did you mean"
suggestion and the list of valid keys, values are coerced to the field's type and checked against
their range or choices, and every problem is reported in one :class:`ConfigError` that names the
file, line and key at fault.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from conformer_vision.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "FALLBACK_MODEL_NAMES",
    "ARCH_ALIASES",
    "OPTION_ALIASES",
    "SPEC_OPTIONS",
    "EXTRA_OPTIONS",
    "available_archs",
    "load_config",
    "add_config_arguments",
    "config_from_args",
    "suggest_names",
    "unknown_options_error",
]

# Model names known without importing the model package (which pulls in torch). The runtime list
# from ``conformer_vision.models.list_models()`` wins whenever that import works.
FALLBACK_MODEL_NAMES: tuple[str, ...] = (
    "conformer_tiny_patch16",
    "conformer_small_patch16",
    "conformer_small_patch32",
    "conformer_base_patch16",
    "conformer_mini_test",
)
# The specification's short names (README, "Prepare the model").
ARCH_ALIASES: dict[str, str] = {
    "conformer_tiny": "conformer_tiny_patch16",
    "conformer_small": "conformer_small_patch16",
    "conformer_base": "conformer_base_patch16",
}


def available_archs() -> tuple[str, ...]:
    """Registered model names: ``conformer_vision.models.list_models()`` if importable, else the
    hard-coded :data:`FALLBACK_MODEL_NAMES` (keeps this module free of a torch dependency)."""
    try:
        from conformer_vision.models import list_models  # lazy: imports torch
    except ImportError:
        return FALLBACK_MODEL_NAMES
    return tuple(list_models())


# --------------------------------------------------------------------------------------------
# Field declaration helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    """A numeric interval; ``None`` bounds are unbounded. NaN is never inside."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and not (v > self.lo if self.lo_open else v >= self.lo):
            return False
        if self.hi is not None and not (v < self.hi if self.hi_open else v <= self.hi):
            return False
        return v == v  # rejects NaN

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


_PROB = _Range(0, 1)  # [0, 1]
_FRAC = _Range(0, 1, hi_open=True)  # [0, 1)
_POS = _Range(0, lo_open=True)  # > 0
_NONNEG = _Range(0)  # >= 0
_ONE_UP = _Range(1)  # >= 1

_SAME = object()  # marker: the default here equals the specification's


def _opt(
    default: Any,
    help: str,
    *,
    group: str,
    choices: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    rejected: Mapping[str, str] | None = None,
    range: _Range | None = None,
    length: int | None = None,
    spec: bool = True,
    spec_default: Any = _SAME,
) -> Any:
    """A dataclass field carrying its help text and validation rules in ``metadata``.

    ``range`` applies to each element of a list value, ``length`` is the required length of a list
    value. ``choices`` are canonical spellings (matched case-insensitively, stored canonical), ``aliases``
    map other spellings to a canonical one, ``rejected`` maps known-but-unsupported values to the
    message explaining why. ``spec`` says whether the option comes from the specification;
    ``spec_default`` records the specification's default where ours differs.
    """
    metadata = {
        "help": help,
        "group": group,
        "choices": tuple(choices) if choices else None,
        "aliases": dict(aliases or {}),
        "rejected": dict(rejected or {}),
        "range": range,
        "length": length,
        "spec": spec,
        "spec_default": default if spec_default is _SAME else spec_default,
    }
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=metadata)
    return field(default=default, metadata=metadata)


_DATA = "Dataset"
_AUG = "Augmentations"
_OPTIM = "Optimizer"
_TRAIN = "Network training config"
_MODEL = "Model arguments"
_HW = "Hardware setup"
_CB = "Callbacks setup"

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # PIL filters timm accepts


# --------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    """Every option of a run. Constructing one validates it (see :meth:`validate`)."""

    # ===== Dataset ===== #
    dataset: str = _opt("ImageNet", "Free-form dataset label (logged and saved); data is always read as "
                        "one folder per class under data_url.", group=_DATA)
    data_url: str = _opt("/data/imagenet/ILSVRC/Data/CLS-LOC/", "Dataset root directory.", group=_DATA)
    train_dir: str = _opt("train", "Training split folder, relative to data_url.", group=_DATA)
    val_dir: str = _opt("validation_preprocess", "Validation split folder, relative to data_url.", group=_DATA)
    train_num_samples: int = _opt(-1, "Use only this many training images (a fixed random subset); -1 = all.",
                                  group=_DATA)
    val_num_samples: int = _opt(-1, "Use only this many validation images (a fixed subset); -1 = all.",
                                group=_DATA)

    # ===== Augmentations ===== #
    auto_augment: Union[str, None] = _opt(
        "rand-m9-mstd0.5-inc1", "timm auto-augment policy string (e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4, "
        "original); null or '' = off.", group=_AUG)
    aa_interpolation: str = _opt("bilinear", "Interpolation inside the auto-augment ops.", group=_AUG,
                                 choices=(*_INTERPOLATIONS, "random"))
    re_mode: str = _opt("pixel", "Random-erasing fill: const (zeros), rand (one colour per channel), "
                        "pixel (per-pixel noise).", group=_AUG, choices=("const", "rand", "pixel"))
    re_prob: float = _opt(0.25, "Random-erasing probability per image; 0 = off.", group=_AUG, range=_PROB)
    re_count: int = _opt(1, "Maximum number of erased rectangles per image.", group=_AUG, range=_ONE_UP)
    cutmix: float = _opt(1.0, "CutMix beta-distribution alpha; 0 = off.", group=_AUG, range=_NONNEG)
    mixup: float = _opt(0.8, "MixUp beta-distribution alpha; 0 = off.", group=_AUG, range=_NONNEG)
    mixup_prob: float = _opt(1.0, "Probability of applying MixUp/CutMix to a batch (or pair/element).",
                             group=_AUG, range=_PROB)
    mixup_mode: str = _opt("batch", "Mix granularity: one lambda per batch, per pair, or per element.",
                           group=_AUG, choices=("batch", "pair", "elem"))
    mixup_off_epoch: float = _opt(0.0, "Turn MixUp/CutMix off from this epoch on; 0 = never.", group=_AUG,
                                  range=_NONNEG)
    switch_prob: float = _opt(0.5, "Probability of CutMix instead of MixUp when both are on.", group=_AUG,
                              range=_PROB)
    label_smoothing: float = _opt(0.1, "Label-smoothing epsilon.", group=_AUG, range=_FRAC)
    min_crop: float = _opt(0.08, "Smallest area fraction of RandomResizedCrop.", group=_AUG,
                           range=_Range(0, 1, lo_open=True))
    crop_pct: float = _opt(0.96, "Eval: resize to image_size/crop_pct, then centre-crop image_size.",
                           group=_AUG, range=_Range(0, 1, lo_open=True))

    # ===== Optimizer ===== #
    optimizer: str = _opt("adamw", "Optimizer: adamw or sgd (SGD with momentum; 'momentum' is accepted "
                          "as an alias).", group=_OPTIM, choices=("adamw", "sgd"), aliases={"momentum": "sgd"})
    beta: list[float] = _opt([0.9, 0.999], "AdamW betas [beta1, beta2], each in [0, 1).", group=_OPTIM,
                             range=_FRAC, length=2)
    eps: float = _opt(1.0e-8, "AdamW epsilon.", group=_OPTIM, range=_POS)
    base_lr: float = _opt(0.001, "Peak learning rate (reached after warm-up).", group=_OPTIM, range=_POS)
    min_lr: float = _opt(1.0e-5, "Learning-rate floor of the schedule.", group=_OPTIM, range=_NONNEG)
    lr_scheduler: str = _opt(
        "cosine_lr", "Schedule after warm-up: cosine_lr, step_lr (x lr_gamma every lr_adjust epochs), "
        "multistep_lr (lr_gamma**(epoch/lr_adjust)), exp_lr (lr_gamma**epoch), constant_lr.", group=_OPTIM,
        choices=("cosine_lr", "step_lr", "multistep_lr", "exp_lr", "constant_lr"),
        aliases={"cosine": "cosine_lr", "step": "step_lr", "multistep": "multistep_lr", "exp": "exp_lr",
                 "exponential": "exp_lr", "exponential_lr": "exp_lr", "constant": "constant_lr"})
    lr_adjust: int = _opt(30, "Epochs per decay period of step_lr / multistep_lr.", group=_OPTIM,
                          range=_ONE_UP)
    lr_gamma: float = _opt(0.97, "Decay factor of step_lr / multistep_lr / exp_lr.", group=_OPTIM,
                           range=_Range(0, 1, lo_open=True))
    momentum: float = _opt(0.9, "SGD momentum.", group=_OPTIM, range=_FRAC)
    weight_decay: float = _opt(0.05, "Decoupled weight decay (not applied to biases, norms, cls_token).",
                               group=_OPTIM, range=_NONNEG)

    # ===== Network training config ===== #
    epochs: int = _opt(300, "Total training epochs.", group=_TRAIN, range=_ONE_UP)
    batch_size: int = _opt(100, "Batch size per device (process); global batch = batch_size x device_num.",
                           group=_TRAIN, range=_ONE_UP)
    is_dynamic_loss_scale: bool = _opt(True, "fp16 only: dynamic loss scaling (GradScaler) instead of a "
                                       "fixed loss_scale.", group=_TRAIN)
    loss_scale: float = _opt(1024.0, "fp16 only: the fixed loss scale, or the initial one when dynamic.",
                             group=_TRAIN, range=_POS, spec_default=1024)
    num_parallel_workers: int = _opt(8, "DataLoader worker processes per device; 0 = load in the main process.",
                                     group=_TRAIN, range=_NONNEG)
    start_epoch: int = _opt(0, "First epoch to run (ignored when resuming a checkpoint, which knows its epoch).",
                            group=_TRAIN, range=_NONNEG)
    warmup_length: int = _opt(2, "Linear warm-up epochs, from warmup_lr to base_lr.", group=_TRAIN,
                              range=_NONNEG)
    warmup_lr: float = _opt(0.000007, "Learning rate at the start of warm-up.", group=_TRAIN, range=_NONNEG)
    use_clip_grad_norm: bool = _opt(True, "Clip the global gradient norm.", group=_TRAIN)
    clip_grad_norm: float = _opt(1.0, "Maximum global gradient norm (when use_clip_grad_norm).", group=_TRAIN,
                                 range=_POS)
    exclude_epoch_state: bool = _opt(True, "pretrained: load weights only, not epoch/optimizer state.",
                                     group=_TRAIN)
    seed: int = _opt(0, "Random seed (model init, data order, augmentations).", group=_TRAIN,
                     range=_Range(0, 2**32 - 1))
    with_ema: bool = _opt(False, "Keep an exponential moving average of the weights.", group=_TRAIN)
    ema_decay: float = _opt(0.9999, "EMA decay per optimizer step.", group=_TRAIN, range=_FRAC)
    pynative_mode: bool = _opt(False, "MindSpore's eager switch. Here eager is the default either way; "
                               "true additionally forbids compile.", group=_TRAIN)

    # ===== Model arguments ===== #
    arch: str = _opt("conformer_tiny_patch16", "Model name (conformer_tiny/small/base are aliases of the "
                     "patch16 variants).", group=_MODEL)
    amp_level: str = _opt(
        "O0", "Mixed precision: O0 fp32; O1/O2/O3 fp16 autocast with loss scaling; bf16 bf16 autocast.",
        group=_MODEL, choices=("O0", "O1", "O2", "O3", "bf16"), aliases={"bfloat16": "bf16", "fp32": "O0"})
    file_format: str = _opt(
        "ONNX", "Export format (HF_HUB: a timm/Hugging Face Hub folder, config.json + model.safetensors).",
        group=_MODEL, choices=("ONNX", "TORCHSCRIPT", "EXPORTED_PROGRAM", "SAFETENSORS", "HF_HUB"),
        aliases={"torch.export": "EXPORTED_PROGRAM", "pt2": "EXPORTED_PROGRAM", "jit": "TORCHSCRIPT",
                 "hf": "HF_HUB", "hub": "HF_HUB", "hf-hub": "HF_HUB", "huggingface": "HF_HUB"},
        rejected={"mindir": "MINDIR is a MindSpore format", "air": "AIR is a MindSpore/Ascend format"})
    pretrained: str = _opt("", "Weights to start from: imagenet (the published ImageNet-1k weights of arch, "
                           "downloaded once into the torch hub cache), a weights file (reference, mmpretrain, "
                           "MindSpore-converted or our checkpoint), or a hub folder (local-dir:DIR, "
                           "hf-hub:user/repo); '' = random init.", group=_MODEL)
    image_size: Union[int, list[int]] = _opt(224, "Input size: an int or [height, width].", group=_MODEL,
                                             range=_ONE_UP, length=2)
    num_classes: int = _opt(1000, "Number of classes (must match the dataset's class folders).", group=_MODEL,
                            range=_ONE_UP)
    drop: float = _opt(0.0, "Dropout rate in the transformer MLPs and attention projection.", group=_MODEL,
                       range=_FRAC)
    drop_block: float = _opt(0.0, "Attention-probability dropout rate (MindSpore feeds drop_block here).",
                             group=_MODEL, range=_FRAC)
    drop_path: float = _opt(0.1, "Stochastic-depth rate (linearly increasing over the 12 transformer blocks).",
                            group=_MODEL, range=_FRAC)
    disable_approximate_gelu: bool = _opt(
        True, "true = exact GELU (reference numerics); false = tanh-approximate GELU (MindSpore numerics).",
        group=_MODEL, spec_default=False)
    use_pytorch_maxpool: bool = _opt(
        True, "true = PyTorch stem max-pool padding (reference numerics); false = TF 'same' padding "
        "(MindSpore numerics).", group=_MODEL, spec_default=False)

    # ===== Hardware setup ===== #
    device_id: int = _opt(0, "CUDA device index for a single process (torchrun uses LOCAL_RANK instead).",
                          group=_HW, range=_NONNEG)
    device_num: Union[int, None] = _opt(None, "Number of processes/devices; null = follow the launcher (torchrun's "
                                        "WORLD_SIZE, 1 without torchrun); a set value must equal it.", group=_HW,
                                        spec_default=1)
    device_target: str = _opt(
        "auto", "auto (cuda if available, else cpu), cuda or cpu; GPU/CPU are accepted as aliases.",
        group=_HW, choices=("auto", "cpu", "cuda"), aliases={"gpu": "cuda"}, spec_default="GPU",
        rejected={"ascend": "Ascend NPUs are a MindSpore target"})

    # ===== Callbacks setup ===== #
    summary_root_dir: str = _opt("runs/summary", "TensorBoard event-file directory.", group=_CB,
                                 spec_default="/mindspore/summary_dir/")
    ckpt_root_dir: str = _opt("runs/checkpoints", "Directory for the rolling checkpoints (and the run's "
                              "config).", group=_CB, spec_default="/mindspore/checkpoints/")
    best_ckpt_root_dir: str = _opt("runs/best_checkpoints", "Directory for the best-accuracy checkpoints.",
                                   group=_CB, spec_default="/mindspore/best_checkpoints/")
    ckpt_keep_num: int = _opt(10, "Rolling checkpoints kept (older ones deleted).", group=_CB, range=_ONE_UP)
    best_ckpt_num: int = _opt(5, "Best-accuracy checkpoints kept; 0 = none.", group=_CB, range=_NONNEG)
    ckpt_save_every_step: int = _opt(0, "Also checkpoint every N optimizer steps; 0 = off.", group=_CB,
                                     range=_NONNEG)
    ckpt_save_every_seconds: int = _opt(1800, "Also checkpoint every N seconds; 0 = off.", group=_CB,
                                        range=_NONNEG)
    print_loss_every: int = _opt(100, "Log the training loss every N steps.", group=_CB, range=_ONE_UP)
    summary_loss_collect_freq: int = _opt(20, "Write the loss to TensorBoard every N steps.", group=_CB,
                                          range=_ONE_UP)
    model_postfix: Union[int, str] = _opt(0, "Tag appended to checkpoint file names.", group=_CB)
    collect_input_data: bool = _opt(False, "Log a grid of the first training batch's images to TensorBoard.",
                                    group=_CB)
    dump_graph: bool = _opt(False, "Write the model's module tree to model.txt in the run directory.",
                            group=_CB)

    # ===== Extras for the PyTorch port ===== #
    checkpoint: str = _opt("", "Checkpoint to resume training from (or to evaluate); 'auto' = newest "
                           "valid one in ckpt_root_dir; '' = none.", group=_CB, spec=False)
    overwrite: bool = _opt(False, "Allow writing into output directories that hold another run.", group=_CB,
                           spec=False)
    sync_bn: bool = _opt(False, "Convert BatchNorm to SyncBatchNorm in distributed training.", group=_HW,
                         spec=False)
    augment: bool = _opt(True, "Master switch; false = no random augmentation at all (deterministic "
                         "resize/centre-crop, no mixup/cutmix/erasing/label smoothing).", group=_AUG, spec=False)
    interpolation: str = _opt("bicubic", "Resize interpolation for training crops and evaluation.", group=_AUG,
                              choices=_INTERPOLATIONS, spec=False)
    color_jitter: float = _opt(0.4, "Colour-jitter strength (training only; timm ignores it when "
                               "auto_augment is set); 0 = off.", group=_AUG, range=_NONNEG, spec=False)
    hflip: float = _opt(0.5, "Horizontal-flip probability (training).", group=_AUG, range=_PROB, spec=False)
    eval_every: int = _opt(1, "Evaluate every N epochs (and always after the last).", group=_TRAIN,
                           range=_ONE_UP, spec=False)
    max_bad_files_fraction: float = _opt(0.01, "Abort when more than this fraction of images in an epoch "
                                         "fail to decode.", group=_DATA, range=_PROB, spec=False)
    # Sharded datasets: WebDataset tar shards written by `conformer prepare shards` (docs/training.md).
    data_format: str = _opt("folder", "How the data is stored: folder (data_url/<train_dir|val_dir>/<class>/<image>) "
                            "or webdataset (tar shards written by `conformer prepare shards`, read from local paths, "
                            "http(s):// or pipe: URLs).", group=_DATA, choices=("folder", "webdataset"), spec=False)
    train_shards: str = _opt("", "data_format webdataset: the training shards, a brace pattern of paths or URLs "
                             "(/data/train-{000000..000146}.tar, pipe:curl -s https://host/train-{000000..000146}.tar); "
                             "'' = every train shard shards_info lists, beside it.", group=_DATA, spec=False)
    val_shards: str = _opt("", "data_format webdataset: the validation shards, as train_shards; '' = every val shard "
                           "shards_info lists, beside it.", group=_DATA, spec=False)
    shards_info: str = _opt("", "data_format webdataset: the shards.json written with the shards (path or URL); "
                            "'' = data_url/shards.json.", group=_DATA, spec=False)
    max_nonfinite_steps: int = _opt(20, "Stop after this many consecutive steps with a NaN/Inf loss.",
                                    group=_TRAIN, range=_ONE_UP, spec=False)
    compile: bool = _opt(False, "Wrap the model in torch.compile (graph mode).", group=_HW, spec=False)
    channels_last: bool = _opt(True, "Use channels_last memory format for the model and inputs.", group=_HW,
                               spec=False)
    use_ema: bool = _opt(False, "Evaluate/export the EMA weights stored in the checkpoint instead of the raw "
                         "ones.", group=_MODEL, spec=False)
    # Fine-tuning: layer-wise learning-rate decay and frozen stages (docs/training.md, "Fine-tuning").
    layer_decay: Union[float, None] = _opt(
        None, "Layer-wise lr decay (timm's --layer-decay): the heads train at the scheduled lr, block k at "
        "lr x layer_decay**(depth + 1 - k), the stem at lr x layer_decay**(depth + 1); in (0, 1]; null = off.",
        group=_OPTIM, spec=False)
    freeze_stages: int = _opt(
        0, "Freeze the first N stages (requires_grad off, BatchNorm statistics kept): 0 = none; stages are the "
        "stem, blocks 1-4, 5-8, 9-11, block 12 + final norm; 5 = the whole backbone (linear probe: only the two "
        "heads train).", group=_TRAIN, range=_Range(0, 5), spec=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Coerce every field to its declared type, normalise spellings of choices (``GPU`` ->
        ``cuda``, ``momentum`` -> ``sgd``, ``conformer_tiny`` -> ``conformer_tiny_patch16``) and
        check ranges and cross-field rules. Raises one :class:`ConfigError` listing every problem."""
        problems: list[tuple[str, str]] = []
        hints = _type_hints()
        for f in dataclasses.fields(self):
            try:
                value = _coerce(getattr(self, f.name), hints[f.name])
                value = _check_field(f, value)
            except _BadValue as e:
                problems.append((f.name, str(e)))
            else:
                setattr(self, f.name, value)
        if not problems:  # cross-field rules need every field well-typed
            problems = self._cross_field_problems()
        if problems:
            raise _InvalidValues(problems)

    def _cross_field_problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        archs = available_archs()
        canonical = ARCH_ALIASES.get(self.arch, self.arch)
        if canonical not in archs:
            out.append(("arch", f"{self.arch!r} is not a known model; valid: "
                        f"{', '.join([*archs, *ARCH_ALIASES])}{_suggest(self.arch, [*archs, *ARCH_ALIASES])}"))
        else:
            self.arch = canonical
            out += self._published_problems()
        for key in ("train_num_samples", "val_num_samples"):
            if getattr(self, key) == 0 or getattr(self, key) < -1:
                out.append((key, f"{getattr(self, key)} must be -1 (all) or a positive count"))
        if self.min_lr > self.base_lr:
            out.append(("min_lr", f"{self.min_lr:g} is above base_lr {self.base_lr:g}"))
        if self.start_epoch >= self.epochs:
            out.append(("start_epoch", f"{self.start_epoch} must be below epochs ({self.epochs})"))
        if self.compile and self.pynative_mode:
            out.append(("compile", "compile: true contradicts pynative_mode: true (eager only); drop one"))
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            out.append(("layer_decay", f"{self.layer_decay:g} is out of range; it must be in (0, 1] (e.g. 0.75), "
                        "or null for no decay"))
        return out

    def _published_problems(self) -> list[tuple[str, str]]:
        """``pretrained: imagenet`` needs an ``arch`` with published weights (``pretrained.PUBLISHED``)."""
        from conformer_vision.pretrained import IMAGENET, PUBLISHED, is_imagenet_name

        try:
            if not is_imagenet_name(self.pretrained):
                return []
        except ConfigError as e:  # a file named imagenet exists too
            return [("pretrained", str(e))]
        self.pretrained = IMAGENET
        if self.arch not in PUBLISHED:
            return [("pretrained", f"imagenet: {self.arch} has no published ImageNet weights (published: "
                     f"{', '.join(PUBLISHED)}); choose one of those as arch, or give a weights file")]
        return []

    # ------------------------------------------------------------------ derived values

    @property
    def canonical_arch(self) -> str:
        """The full model name (short spec aliases resolved)."""
        return ARCH_ALIASES.get(self.arch, self.arch)

    @property
    def image_hw(self) -> tuple[int, int]:
        """``image_size`` as (height, width)."""
        if isinstance(self.image_size, list):
            return int(self.image_size[0]), int(self.image_size[1])
        return int(self.image_size), int(self.image_size)

    @property
    def device(self) -> Any:
        """The ``torch.device`` to run on. ``auto`` -> cuda if available, else cpu. A cuda index
        comes from ``LOCAL_RANK`` under torchrun, else from ``device_id``."""
        import torch

        target = self.device_target
        if target == "auto":
            target = "cuda" if torch.cuda.is_available() else "cpu"
        if target == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError("device_target: cuda (GPU) was requested but CUDA is not available here; "
                              "set device_target: cpu or auto")
        local_rank = os.environ.get("LOCAL_RANK")
        index = int(local_rank) if local_rank is not None else self.device_id
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device_id: cuda:{index} requested but only {torch.cuda.device_count()} "
                              "CUDA device(s) are visible")
        return torch.device("cuda", index)

    @property
    def amp_dtype(self) -> Any:
        """Autocast dtype: ``None`` (O0, fp32), ``torch.float16`` (O1/O2/O3) or ``torch.bfloat16``."""
        if self.amp_level == "O0":
            return None
        import torch

        return torch.bfloat16 if self.amp_level == "bf16" else torch.float16

    @property
    def use_grad_scaler(self) -> bool:
        """True for fp16 autocast (O1/O2/O3): loss scaling is needed, dynamic if
        ``is_dynamic_loss_scale`` else fixed at ``loss_scale``."""
        return self.amp_level in ("O1", "O2", "O3")

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain primitives (str/int/float/bool/None/lists), JSON- and YAML-serialisable, in
        declaration order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self) -> str:
        """The resolved configuration as a YAML document (every option)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "dict", strict: bool = True) -> Config:
        """Inverse of :meth:`to_dict`. Values are checked as from YAML and missing keys take
        defaults; unknown keys are errors, or with ``strict=False`` (a config saved by another
        version of this package) dropped. ``source`` names the origin in error messages."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping of options, got {type(d).__name__}")
        if strict:
            _check_unknown_keys(d.keys(), {k: source for k in d})
        values, sources = _resolve_aliases({k: v for k, v in d.items() if k in _FIELDS or k in OPTION_ALIASES},
                                           {k: source for k in d})
        return _build(values, sources, source)


SPEC_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["spec"])
EXTRA_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if not f.metadata["spec"])
_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}

# True aliases: other codebases' names (DeiT, timm, most tutorials) for exactly our option, accepted
# in YAML and on the command line alike and stored under the canonical name. Kept small on purpose:
# only names whose meaning and unit are ours. Giving an alias and its option together is an error.
OPTION_ALIASES: dict[str, str] = {"lr": "base_lr", "learning_rate": "base_lr", "warmup_epochs": "warmup_length"}

# Other names other training codebases use for our options: not accepted (their meaning or unit
# differs in detail), but pointed to ours by the "did you mean" of an unknown option.
_FOREIGN_NAMES: dict[str, str] = {
    "opt": "optimizer", "opt_eps": "eps", "opt_betas": "beta",
    "betas": "beta", "sched": "lr_scheduler", "scheduler": "lr_scheduler",
    "warmup_lr_init": "warmup_lr", "smoothing": "label_smoothing", "reprob": "re_prob", "remode": "re_mode",
    "recount": "re_count", "aa": "auto_augment", "mixup_switch_prob": "switch_prob",
    "train_interpolation": "interpolation", "drop_path_rate": "drop_path", "drop_rate": "drop",
    "model": "arch", "nb_classes": "num_classes", "input_size": "image_size", "img_size": "image_size",
    "num_workers": "num_parallel_workers", "workers": "num_parallel_workers", "data_path": "data_url",
    "data_dir": "data_url", "output_dir": "ckpt_root_dir", "resume": "checkpoint", "model_ema": "with_ema",
    "model_ema_decay": "ema_decay", "clip_grad": "clip_grad_norm", "amp": "amp_level", "device": "device_target",
    "batch": "batch_size", "finetune": "pretrained", "color-jitter": "color_jitter", "crop_ratio": "crop_pct",
    "frozen_stages": "freeze_stages", "trainable_layers": "freeze_stages",
}


# --------------------------------------------------------------------------------------------
# Coercion and checks
# --------------------------------------------------------------------------------------------


class _BadValue(ValueError):
    """One field's value is wrong (message without the key)."""


class _InvalidValues(ConfigError):
    """Validation problems as (key, message) pairs; :func:`load_config` re-raises them with the
    file/line each key came from."""

    def __init__(self, problems: list[tuple[str, str]], sources: Mapping[str, str] | None = None,
                 origin: str = "") -> None:
        self.problems = problems
        sources = sources or {}
        lines = [f"  - {k}: {msg}" + (f"  [{sources[k]}]" if k in sources else "") for k, msg in problems]
        head = f"invalid configuration{f' ({origin})' if origin else ''}:"
        super().__init__("\n".join([head, *lines]))

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return ConfigError, (str(self),)  # pickles as the plain public error


_hints_cache: dict[str, Any] = {}


def _type_hints() -> dict[str, Any]:
    if not _hints_cache:
        _hints_cache.update(typing.get_type_hints(Config))
    return _hints_cache


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NULL = {"none", "null", "~"}


def _describe(tp: Any) -> str:
    if tp is bool:
        return "true/false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return " or ".join(_describe(a) for a in typing.get_args(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to type ``tp`` or raise
    :class:`_BadValue`. Strings are parsed; other values must already have the right type (ints
    are accepted for floats, 0/1 for bools)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        arms = typing.get_args(tp)
        if type(None) in arms and (value is None or (isinstance(value, str) and value.strip().lower() in _NULL)):
            return None
        for arm in arms:
            if arm is not type(None):
                try:
                    return _coerce(value, arm)
                except _BadValue:
                    pass
        raise _BadValue(f"expected {_describe(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise _BadValue(f"expected {_describe(tp)}, got {value!r}") from None
            else:
                value = [v for v in re.split(r"[,\s]+", text) if v]
        if not isinstance(value, (list, tuple)):
            raise _BadValue(f"expected {_describe(tp)} (e.g. [0.9, 0.999] or 0.9,0.999), got {value!r}")
        return [_coerce(v, item) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _BadValue(f"expected true/false (also yes/no, 1/0), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _BadValue(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())  # also catches PyYAML reading 1e-8 as a string
            except ValueError:
                raise _BadValue(f"expected a number, got {value!r}") from None
        else:
            raise _BadValue(f"expected a number, got {value!r}")
        if not math.isfinite(result):
            raise _BadValue(f"expected a finite number, got {value!r}")
        return result
    if tp is str:
        if isinstance(value, str):
            return value
        hint = "; quote it in YAML" if isinstance(value, (int, float, bool)) else ""
        raise _BadValue(f"expected a string, got {value!r} ({type(value).__name__}){hint}")
    raise TypeError(f"unsupported option type {tp!r}")  # a bug in this module, not user input


def _check_field(f: dataclasses.Field, value: Any) -> Any:
    """Normalise a choice's spelling and check choices/range; returns the canonical value."""
    md = f.metadata
    if md["choices"] and isinstance(value, str):
        key = value.strip().lower()
        if key in md["rejected"]:
            raise _BadValue(f"{value!r} is not supported here: {md['rejected'][key]}; valid choices: "
                            f"{', '.join(md['choices'])}")
        table = {c.lower(): c for c in md["choices"]} | {a.lower(): c for a, c in md["aliases"].items()}
        if key not in table:
            raise _BadValue(f"{value!r} is not a valid choice; valid choices: {', '.join(md['choices'])}"
                            + (f" (aliases: {', '.join(md['aliases'])})" if md["aliases"] else "")
                            + _suggest(value, list(table)))
        return table[key]
    if f.name == "auto_augment" and isinstance(value, str):
        if value.strip().lower() in ("", *_NULL):
            return None
        problem = _auto_augment_problem(value)
        if problem:
            raise _BadValue(f"{value!r} is not a timm auto-augment policy: {problem}; e.g. rand-m9-mstd0.5-inc1, "
                            "augmix-m5-w4, original-mstd0.5, or null for none")
    if isinstance(value, list) and md["length"] is not None and len(value) != md["length"]:
        raise _BadValue(f"expected {md['length']} values, got {value!r}")
    rng = md["range"]
    if rng is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in rng:
                raise _BadValue(f"{v!r} is out of range; it must be {rng}")
    return value


def _auto_augment_problem(policy: str) -> str | None:
    """Why timm would not build the augmentation ``policy`` names, or ``None`` when it would.

    The transform is built by the timm function that ``timm.data.create_transform`` picks for the
    string (``rand...``, ``augmix...``, else AutoAugment), so timm's own parser judges it: an unknown
    policy or section key, or an unreadable number, fails there. timm skips without a word a section
    from which it reads no value (``bogus`` in ``rand-bogus``) and falls back to its default op set
    for an unknown RandAugment op-set name (``tbogus``); both would silently train something other
    than what was asked, so both are refused too.
    """
    from timm.data import auto_augment as aa  # lazy: imports torch

    head, *sections = policy.split("-")
    if head.startswith("rand"):
        build = aa.rand_augment_transform
    elif head.startswith("augmix"):
        build = aa.augment_and_mix_transform
    else:
        build = aa.auto_augment_transform
    try:
        build(policy, None)
    except (AssertionError, ValueError, KeyError, IndexError) as e:  # timm's parser asserts
        return f"timm refuses it ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
    for section in sections:
        if head == "rand" and section.startswith("t"):
            name = section[1:]  # an op-set name; timm knows it when the result ignores ``increasing``
            if aa.rand_augment_choices(name, increasing=True) != aa.rand_augment_choices(name, increasing=False):
                return f"timm knows no RandAugment op set {name!r} (section {section!r}) and would use its default"
        elif not re.search(r"\d", section):
            return f"section {section!r} holds no value, so timm would ignore it"
    return None


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=3)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def suggest_names(name: str, valid: Collection[str]) -> list[str]:
    """Up to three names in ``valid`` the user may have meant by the unknown ``name`` (dashes and
    underscores alike): the option another codebase means by it (``resume`` -> ``checkpoint``), then
    close spellings. An alias found is given as its canonical name."""
    name = name.lstrip("-").replace("-", "_")
    if not name:
        return []
    guesses: list[str] = []
    foreign = {k: v for k, v in _FOREIGN_NAMES.items() if v in valid}
    longer = [v for v in valid if v.startswith(name) and v != name]  # an abbreviation, no longer accepted
    for g in ([name] if name in foreign else []) + longer + difflib.get_close_matches(name, [*valid, *foreign], n=4):
        g = foreign.get(g, g)
        g = OPTION_ALIASES.get(g, g) if OPTION_ALIASES.get(g) in valid else g
        if g not in guesses:
            guesses.append(g)
    return guesses[:3]


def unknown_options_error(unknown: Sequence[Any], where: Mapping[Any, str], valid: Collection[str], *,
                          header: str = "unknown configuration option(s):",
                          listing: str | None = None) -> ConfigError:
    """The error for ``unknown`` option names: one line per name with where it came from and a "did
    you mean" among ``valid``, then the valid names (``listing``, default: the configuration's)."""
    lines = [header]
    for k in unknown:
        guesses = suggest_names(str(k), valid)
        hint = f"did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else "no similar option"
        lines.append(f"  - unknown option {k!r} [{where.get(k, '?')}]: {hint}")
    lines.append(f"  valid options: {listing or ', '.join(_FIELDS) + ' (see docs/options.md or --help)'}")
    return ConfigError("\n".join(lines))


def _check_unknown_keys(keys: Iterable[Any], where: Mapping[Any, str]) -> None:
    unknown = [k for k in keys if k not in _FIELDS and k not in OPTION_ALIASES]
    if unknown:
        raise unknown_options_error(unknown, where, [*_FIELDS, *OPTION_ALIASES])


def _both_given(canonical: str, names: tuple[str, str], where: tuple[str, str]) -> str:
    """The message for one option given twice in one source, under two of its names."""
    shown = " and ".join(f"{n!r}" + (f" [{w}]" if w else "") for n, w in zip(names, where))
    aliases = [repr(n) for n in dict.fromkeys(names) if n.lstrip("-") != canonical]
    return (f"option {canonical!r} is given twice, as {shown} ({' and '.join(aliases)} "
            f"{'is an alias' if len(aliases) == 1 else 'are aliases'} of {canonical!r}); give it once")


def _resolve_aliases(values: Mapping[str, Any], where: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``values`` with every alias key renamed to its option, and where each came from (an alias
    noted: ``run.yaml:3 as 'lr'``). Two names of one option in ``values`` are a :class:`ConfigError`."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        canonical = OPTION_ALIASES.get(key, key)
        if canonical in given_as:
            names = (given_as[canonical], key)
            raise ConfigError(_both_given(canonical, names, (where.get(names[0], "?"), where.get(key, "?"))))
        given_as[canonical] = key
        out[canonical] = value
        sources[canonical] = where.get(key, "?") + (f" as {key!r}" if key != canonical else "")
    return out, sources


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(values: dict[str, Any], sources: Mapping[str, str], origin: str) -> Config:
    """Construct a Config, re-labelling validation problems with where each key came from."""
    try:
        return Config(**values)
    except _InvalidValues as e:
        raise _InvalidValues(e.problems, sources, origin) from None


# --------------------------------------------------------------------------------------------
# YAML and command line
# --------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The YAML mapping in ``path`` and, per key, ``"path:line"``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {e}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: expected a mapping of 'option: value' lines, but the file is {kind}")
    lines = {k.value: f"{path}:{k.start_mark.line + 1}" for k, _ in node.value}
    return data, {k: lines.get(k, path) for k in data}


def _parse_cli_tokens(tokens: Sequence[str]) -> dict[str, Any]:
    """``["--epochs", "5", "--with_ema", "--beta", "0.9", "0.99", "--seed=3"]`` -> a dict of
    strings (lists for several values; a bare flag means ``true``). Dashes in names become
    underscores; values that look like negative numbers are values, not options."""
    out: dict[str, Any] = {}
    key: str | None = None
    for tok in tokens:
        is_option = tok.startswith("--") or (tok.startswith("-") and not _looks_numeric(tok) and len(tok) > 1)
        if is_option:
            name, eq, val = tok.lstrip("-").partition("=")
            key = name.replace("-", "_")
            if not key:
                raise ConfigError(f"command line: malformed option {tok!r}")
            out[key] = [val] if eq else []
            if eq:
                key = None
        elif key is None:
            raise ConfigError(f"command line: value {tok!r} does not follow an option (expected --name value)")
        else:
            out[key].append(tok)
    return {k: ("true" if not v else v[0] if len(v) == 1 else v) for k, v in out.items()}


def _looks_numeric(tok: str) -> bool:
    try:
        float(tok.split(",")[0])
    except ValueError:
        return False
    return True


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, object] | Sequence[str] | None = None) -> Config:
    """Read the YAML at ``path`` (optional), apply ``overrides`` on top (a dict, or command-line
    tokens such as ``["--batch_size", "48", "--amp_level", "O1"]``) and validate.

    Raises :class:`ConfigError` for a missing/unreadable file, YAML syntax errors (with line),
    a document that is not a mapping, unknown keys (with suggestions and the valid keys), values of
    the wrong type, out of range or not among the choices.
    """
    return _load(path, overrides, "override")


def _load(path: str | os.PathLike[str] | None, overrides: Mapping[str, object] | Sequence[str] | None,
          label: str) -> Config:
    """:func:`load_config`, with ``label`` naming where a mapping of overrides came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    origin = ""
    if path is not None:
        path = os.fspath(path)
        data, lines = _read_yaml(path)
        _check_unknown_keys(data, lines)
        data, lines = _resolve_aliases(data, lines)
        values.update(data)
        sources.update(lines)
        origin = path
    if overrides is not None:
        if isinstance(overrides, Mapping):
            over = dict(overrides)
        elif isinstance(overrides, (str, bytes)):
            raise TypeError("overrides must be a mapping or a list of command-line tokens, not a string")
        else:
            over, label = _parse_cli_tokens(list(overrides)), "command line"
        _check_unknown_keys(over, {k: label for k in over})
        over, labels = _resolve_aliases(over, {k: label for k in over})
        values.update(over)
        sources.update(labels)
    return _build(values, sources, origin)


class _OptionAction(argparse.Action):
    """Stores a configuration option given as ``--name`` or as an alias (``--lr``), remembering the
    spelling: an alias and its option (or two aliases of one option) on one command line are an
    error, as in one YAML file; repeating the same spelling keeps the last value, as argparse does."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        spellings: dict[str, str] = vars(namespace).setdefault("_option_spellings", {})
        first = spellings.setdefault(self.dest, option_string or self.dest)
        if option_string is not None and first != option_string:
            raise ConfigError(_both_given(self.dest, (first, option_string), ("command line", "command line")))
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> argparse.ArgumentParser:
    """Add ``--config PATH`` and one ``--<option>`` per field (grouped as in the specification's
    YAML), each with its meaning, default and choices in the help, plus the :data:`OPTION_ALIASES`
    (``--lr``: named in their option's help, not listed on their own). Options not given on the
    command line are absent from the parsed namespace, so the YAML value is kept; use
    :func:`config_from_args` on ``vars(namespace)``."""
    skip = set(exclude)
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="YAML file with the options (command-line options override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = _type_hints()
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        md = f.metadata
        if md["group"] not in groups:
            groups[md["group"]] = parser.add_argument_group(md["group"])
        group = groups[md["group"]]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        extra = [f"default: {_plain(default)!r}"]
        if md["choices"]:
            extra.append(f"choices: {', '.join(md['choices'])}")
        elif md["range"] is not None:
            extra.append(f"must be {md['range']}")
        if not md["spec"]:
            extra.append("PyTorch port only")
        aliases = [f"--{a}" for a, c in OPTION_ALIASES.items() if c == f.name]
        if aliases:
            extra.append(f"alias: {', '.join(aliases)}")
        text = f"{md['help']} ({'; '.join(extra)})".replace("%", "%%")
        tp = hints[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text, "action": _OptionAction}
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(tp) is list or (typing.get_origin(tp) in (Union, types.UnionType)
                                               and any(typing.get_origin(a) is list for a in typing.get_args(tp))):
            kwargs.update(nargs="+", metavar="V")
        else:
            kwargs.update(metavar=f.name.upper())
        group.add_argument(f"--{f.name}", **kwargs)
        for alias in aliases:
            group.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS})
    return parser


def config_from_args(args: Mapping[str, Any], *, config_key: str = "config") -> Config:
    """Build the Config from a parsed-arguments dict (``vars(namespace)`` of a parser prepared by
    :func:`add_config_arguments`): the YAML named by ``args[config_key]``, overridden by every
    option present. Keys that are not options (a sub-command name, say) are ignored."""
    overrides: dict[str, Any] = {}
    for key, value in args.items():
        if key in _FIELDS and value is not argparse.SUPPRESS:
            if isinstance(value, list) and len(value) == 1:  # nargs='+' with one token: "224" or "0.9,0.99"
                value = value[0]
            overrides[key] = value
    path = args.get(config_key)
    return _load(path, overrides, "command line")
