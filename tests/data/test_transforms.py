"""Preprocess (eval preset, serialisation) and the timm-based training transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import ColorJitter, InterpolationMode, RandomHorizontalFlip

from conformer_vision.data.transforms import Preprocess, build_train_transform, preprocess_image
from conformer_vision.errors import ConfigError

AA = "rand-m9-mstd0.5-inc1"


def photo(width: int = 40, height: int = 30) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def train_kwargs(**overrides):
    kwargs = dict(min_crop=0.5, auto_augment=AA, aa_interpolation="bilinear", re_prob=0.25, re_mode="pixel", re_count=1)
    return {**kwargs, **overrides}


def kinds(transform) -> list[type]:
    return [type(t) for t in transform.transforms]


# ---- Preprocess ------------------------------------------------------------------------------ #


def test_preprocess_round_trips_through_json():
    pre = Preprocess(input_size=(96, 64), interpolation="bilinear", crop_pct=0.9, mean=(0.5,) * 3, std=(0.25,) * 3)
    data = json.loads(json.dumps(pre.to_dict()))
    assert Preprocess.from_dict(data) == pre
    assert data["input_size"] == [96, 64] and isinstance(hash(Preprocess.from_dict(data)), int)


@pytest.mark.parametrize(
    "bad",
    [
        {"crop_pct": 0.0},
        {"crop_pct": 1.5},
        {"interpolation": "cubic"},
        {"input_size": (0, 4)},
        {"mean": (0.5, 0.5)},
        {"std": (1, 0, 1)},
        {"crop_pct": "big"},
        {"input_szie": (8, 8)},
    ],
)
def test_preprocess_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        Preprocess.from_dict(bad)


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    # 40x20 image, crop_pct 0.5, size 10 -> shorter side to floor(10 / 0.5) = 20 (no-op), centre 10x10.
    image = Image.fromarray(np.arange(20 * 40 * 3, dtype=np.uint32).reshape(20, 40, 3).astype(np.uint8))
    pre = Preprocess(input_size=(10, 10), interpolation="nearest", crop_pct=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    out = preprocess_image(image, pre)
    expected = torch.from_numpy(np.asarray(image)[5:15, 15:25].copy()).permute(2, 0, 1).float() / 255
    assert out.shape == (3, 10, 10) and torch.equal(out, expected)


@pytest.mark.parametrize("size", [(32, 32), (32, 24), (24, 40)])
def test_eval_transform_shapes(size):
    out = Preprocess(input_size=size).eval_transform()(photo())
    assert out.shape == (3, *size) and out.dtype == torch.float32


def test_preprocess_image_needs_rgb():
    with pytest.raises(ValueError, match="load_rgb"):
        preprocess_image(photo().convert("L"), Preprocess(input_size=(8, 8)))


# ---- training transform ---------------------------------------------------------------------- #


def test_train_transform_output_and_stages():
    transform = build_train_transform(32, **train_kwargs())
    out = transform(photo())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    stages = kinds(transform)
    assert stages[:3] == [RandomResizedCropAndInterpolation, RandomHorizontalFlip, RandAugment]
    assert RandomErasing in stages and ColorJitter not in stages  # timm drops jitter under RandAugment
    assert transform.transforms[0].scale == (0.5, 1.0)


def test_aa_interpolation_reaches_the_augment_ops_only():
    transform = build_train_transform(32, **train_kwargs(aa_interpolation="bilinear"), interpolation="bicubic")
    crop, aug = transform.transforms[0], transform.transforms[2]
    assert crop.interpolation == InterpolationMode.BICUBIC
    assert {op.kwargs["resample"] for op in aug.ops} == {Image.Resampling.BILINEAR}


def test_aa_interpolation_random_keeps_timms_random_choice():
    transform = build_train_transform(32, **train_kwargs(aa_interpolation="random"))
    aug = transform.transforms[2]
    assert all(isinstance(op.kwargs["resample"], tuple) for op in aug.ops)


def test_same_interpolation_is_one_timm_build():
    transform = build_train_transform((24, 32), **train_kwargs(aa_interpolation="bicubic"), interpolation="bicubic")
    assert {op.kwargs["resample"] for op in transform.transforms[2].ops} == {Image.Resampling.BICUBIC}
    assert transform(photo()).shape == (3, 24, 32)


@pytest.mark.parametrize("off", ["", None])
def test_auto_augment_and_erasing_can_be_disabled(off):
    transform = build_train_transform(16, **train_kwargs(auto_augment=off, re_prob=0.0))
    stages = kinds(transform)
    assert RandAugment not in stages and RandomErasing not in stages and ColorJitter in stages
    no_jitter = build_train_transform(16, **train_kwargs(auto_augment=off), color_jitter=0.0)
    assert ColorJitter not in kinds(no_jitter)


def test_no_augment_is_the_deterministic_eval_transform():
    transform = build_train_transform(16, **train_kwargs(), augment=False, crop_pct=0.875)
    image = photo()
    assert torch.equal(transform(image), transform(image))
    assert torch.equal(transform(image), Preprocess(input_size=(16, 16)).eval_transform()(image))


@pytest.mark.parametrize(
    "bad",
    [
        dict(auto_augment="rand-x9"),
        dict(auto_augment="nonsense"),
        dict(re_mode="zero"),
        dict(min_crop=0.0),
        dict(re_prob=2.0),
        dict(aa_interpolation="cubic"),
    ],
)
def test_train_transform_rejects_bad_options(bad):
    with pytest.raises(ConfigError):
        build_train_transform(16, **train_kwargs(**bad))
