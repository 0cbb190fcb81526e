"""Preprocessing, defined once: the eval/predict/export preset and the training augmentation.

`Preprocess` is the whole inference-time recipe (size, interpolation, crop_pct, mean, std). It is
stored in checkpoints and ONNX metadata through `to_dict()` / `from_dict()`, so every path that turns
an image into a tensor for a trained model rebuilds exactly the same transform:

    resize so the image covers floor(size / crop_pct) on each side, keeping its aspect ratio
    (for a square size: shorter side -> floor(size / crop_pct)) -> centre crop to `input_size`
    -> ToTensor -> Normalize(mean, std)

which is timm's `transforms_imagenet_eval` with `crop_mode='center'`, used here as is.

Training augmentation is timm's `create_transform(is_training=True)` (RandomResizedCrop, flip,
AutoAugment/RandAugment/AugMix, colour jitter when no auto augment, random erasing).

How `aa_interpolation` maps onto timm: timm has a single `interpolation` argument, used both by the
random-resized crop and, unless it is 'random', as the resampling filter of the auto-augment ops
(otherwise each op picks bilinear or bicubic at random). The auto-augment config string has no
interpolation field. So when `aa_interpolation` equals `interpolation` one timm call does it; when
they differ the transform is built twice with timm's three-stage split (`separate=True`) and spliced:
the crop/flip stage from the `interpolation` build, the auto-augment and final stages from the
`aa_interpolation` build. `aa_interpolation='random'` keeps timm's random bilinear/bicubic choice.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_aa
from torchvision import transforms as T

from conformer_vision.errors import ConfigError

__all__ = [
    "INTERPOLATIONS",
    "DEFAULT_CROP_PCT",
    "Preprocess",
    "auto_augment_problem",
    "build_train_transform",
    "preprocess_image",
]

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
"""Resampling filters accepted for resizing (timm's names)."""

DEFAULT_CROP_PCT = 0.875
_RE_MODES = ("const", "rand", "pixel")

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class Preprocess:
    """The inference-time preprocessing recipe of a model.

    Attributes:
        input_size: (height, width) of the network input in pixels.
        interpolation: resize filter, one of `INTERPOLATIONS`.
        crop_pct: fraction of the resized image kept by the centre crop, in (0, 1].
        mean: per-channel RGB mean on the 0..1 scale, subtracted after ToTensor.
        std: per-channel RGB standard deviation on the 0..1 scale.
    """

    input_size: tuple[int, int] = (224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = DEFAULT_CROP_PCT
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        # Normalise sequences (JSON gives lists) to tuples so the object stays hashable.
        object.__setattr__(self, "input_size", _size_pair(self.input_size))
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        _check_interpolation("interpolation", self.interpolation)
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if min(self.std) <= 0:
            raise ConfigError(f"std values must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (lists, floats, str); inverse of `from_dict`."""
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": float(self.crop_pct),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """Rebuild from `to_dict()` output; unknown keys are an error, missing ones take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing keys {unknown}; valid keys are {sorted(known)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid preprocessing settings {dict(data)}: {exc}") from None

    def eval_transform(self) -> Transform:
        """PIL RGB image -> normalised float tensor (3, H, W): resize, centre crop, normalise."""
        return _eval_transform(self)


@functools.lru_cache(maxsize=16)
def _eval_transform(pre: Preprocess) -> Transform:
    """Build (once per distinct recipe) timm's centre-crop eval transform."""
    return create_transform(
        input_size=(3, *pre.input_size),
        is_training=False,
        interpolation=pre.interpolation,
        crop_pct=pre.crop_pct,
        crop_mode="center",
        mean=pre.mean,
        std=pre.std,
    )


def preprocess_image(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """One decoded RGB image (from `load_rgb`) -> model input tensor (3, H, W), float32."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image (decode with load_rgb), got mode {img.mode}")
    return pre.eval_transform()(img)


def build_train_transform(
    image_size: int | tuple[int, int],
    *,
    min_crop: float = 0.08,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    aa_interpolation: str = "bicubic",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    interpolation: str = "bicubic",
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN),  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD),  # type: ignore[assignment]
    augment: bool = True,
    crop_pct: float = DEFAULT_CROP_PCT,
) -> Transform:
    """Training transform: PIL RGB image -> augmented, normalised tensor (3, H, W).

    Args:
        image_size: output size, an int for square or (height, width).
        min_crop: smallest crop area fraction of RandomResizedCrop (scale=(min_crop, 1)).
        auto_augment: timm auto-augment string ('rand-...', 'augmix-...', 'v0', ...); '' or None: off.
        aa_interpolation: resampling of the auto-augment ops, or 'random' (module docstring).
        re_prob: random erasing probability; 0 disables it.
        re_mode: random erasing fill, 'const', 'rand' or 'pixel'.
        re_count: maximum number of erased regions per image.
        hflip: horizontal flip probability.
        color_jitter: jitter strength; timm applies it only when auto augment is off.
        interpolation: resampling of the random-resized crop, or 'random'.
        mean, std: normalisation, as in `Preprocess`.
        augment: False returns the deterministic eval transform (resize, centre crop with
            `crop_pct`, no flip), for tests and parity checks.
        crop_pct: used only when `augment` is False.
    """
    size = _size_pair(image_size)
    if not augment:
        pre = Preprocess(size, interpolation=_fixed(interpolation), crop_pct=crop_pct, mean=mean, std=std)
        return pre.eval_transform()
    _check_train_args(min_crop, re_prob, re_mode, re_count, hflip, interpolation, aa_interpolation)
    common: dict[str, Any] = dict(
        input_size=(3, *size),
        is_training=True,
        scale=(min_crop, 1.0),
        hflip=hflip,
        color_jitter=color_jitter or None,
        auto_augment=auto_augment or None,
        mean=_triple("mean", mean),
        std=_triple("std", std),
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
    )
    if not auto_augment or aa_interpolation == interpolation:
        return _guard_posterize(_timm_train(common, interpolation, auto_augment))
    crop_stage, _, _ = _timm_train({**common, "separate": True}, interpolation, auto_augment)
    _, aa_stage, final_stage = _timm_train({**common, "separate": True}, aa_interpolation, auto_augment)
    return _guard_posterize(T.Compose([*crop_stage.transforms, *aa_stage.transforms, *final_stage.transforms]))


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, also for 0 bits (a black image, as Pillow < 11 gave): timm's 'inc1'
    policies reach 0 bits at magnitude 10, which Pillow >= 11 rejects with a ValueError."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _guard_posterize(transform: Any) -> Any:
    """Point the Posterize ops of timm's auto-augment policies in `transform` at `_posterize`."""
    for stage in getattr(transform, "transforms", []):
        ops = list(getattr(stage, "ops", []))
        ops += [op for sub in getattr(stage, "policy", []) for op in sub]  # AutoAugment: list of sub-policies
        for op in ops:
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = _posterize
    return transform


def auto_augment_problem(policy: str) -> str | None:
    """Why timm would not build ``policy``, or None. timm's own parser judges it (through the function
    ``timm.data.create_transform`` picks for the string); a section from which timm reads no value
    (``bogus`` in ``rand-bogus``) and an unknown RandAugment op set (``tbogus``) are refused too,
    since timm would skip them without a word and train something else than asked."""
    head, *sections = policy.split("-")
    build = (
        timm_aa.rand_augment_transform
        if head.startswith("rand")
        else timm_aa.augment_and_mix_transform
        if head.startswith("augmix")
        else timm_aa.auto_augment_transform
    )
    try:
        build(policy, None)
    except (AssertionError, ValueError, KeyError, IndexError) as e:  # timm's parser asserts
        return f"timm refuses it ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
    for section in sections:
        if head == "rand" and section.startswith("t"):
            name = section[1:]  # an op-set name; timm knows it when the result ignores ``increasing``
            if timm_aa.rand_augment_choices(name, increasing=True) != timm_aa.rand_augment_choices(
                name, increasing=False
            ):
                return f"timm knows no RandAugment op set {name!r} (section {section!r}) and would use its default"
        elif not re.search(r"\d", section):
            return f"section {section!r} holds no value, so timm would ignore it"
    return None


def _timm_train(kwargs: dict[str, Any], interpolation: str, auto_augment: str | None) -> Any:
    """timm's train transform, with a bad auto-augment string reported as a ConfigError."""
    try:
        return create_transform(**kwargs, interpolation=interpolation)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise ConfigError(
            f"invalid auto_augment {auto_augment!r} (timm: {exc or type(exc).__name__}); "
            "examples: 'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2', 'v0', '' to disable"
        ) from None


def _check_train_args(
    min_crop: float,
    re_prob: float,
    re_mode: str,
    re_count: int,
    hflip: float,
    interpolation: str,
    aa_interpolation: str,
) -> None:
    """Range checks for `build_train_transform`, as ConfigErrors naming the value."""
    if not 0.0 < min_crop <= 1.0:
        raise ConfigError(f"min_crop must be in (0, 1], got {min_crop}")
    for name, p in (("re_prob", re_prob), ("hflip", hflip)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    if re_mode not in _RE_MODES:
        raise ConfigError(f"re_mode must be one of {list(_RE_MODES)}, got {re_mode!r}")
    if re_count < 1:
        raise ConfigError(f"re_count must be >= 1, got {re_count}")
    _check_interpolation("interpolation", interpolation, allow_random=True)
    _check_interpolation("aa_interpolation", aa_interpolation, allow_random=True)


def _check_interpolation(name: str, value: str, allow_random: bool = False) -> None:
    valid = INTERPOLATIONS + (("random",) if allow_random else ())
    if value not in valid:
        raise ConfigError(f"{name} must be one of {list(valid)}, got {value!r}")


def _fixed(interpolation: str) -> str:
    """A deterministic filter for the no-augment path ('random' -> bicubic)."""
    return "bicubic" if interpolation == "random" else interpolation


def _size_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int or (h, w) sequence -> (h, w) tuple of positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ConfigError(f"image size must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def _triple(name: str, values: Any) -> tuple[float, float, float]:
    """Three floats (one per RGB channel) as a tuple."""
    triple = tuple(float(v) for v in values)
    if len(triple) != 3:
        raise ConfigError(f"{name} must have 3 values (R, G, B), got {values!r}")
    return triple  # type: ignore[return-value]
