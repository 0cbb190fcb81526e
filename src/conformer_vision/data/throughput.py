"""How many training images one DataLoader worker decodes and augments per second, to size
``num_parallel_workers`` against a device's training throughput (``conformer benchmark --mode data``,
``cli/benchmark_data.py``).

Each image goes through what a training loader worker does with it: ``load_rgb`` (the full decode),
then the training transform of a config (default: the specification's recipe as ``config.py``
sets it, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25 in pixel mode, random-resized
crop, flip, at ``--image_size``) under RNGs seeded per image, as ``ImageFolderDataset`` does. The
images are ``--data_dir`` (any folder of images, searched recursively: your own data is the best
measure), or by default 64 ImageNet-like JPEGs (375 to 500 pixels a side, quality 90) cut from
matplotlib's sample photograph, written to a temporary folder.

Two measures:

* one worker: this process on one compute thread (a loader worker runs on one), decode and
  augmentation timed apart, ``--images`` images after a warm-up; its images/s is the figure per worker;
* through a DataLoader with each of ``--loader_workers`` worker counts (batches of ``--batch_size``,
  timed after the workers have started): the total and per worker, which shows how far this
  machine's cores carry it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from conformer_vision.data.datasets import sample_seed, seeded_rngs
from conformer_vision.data.images import load_rgb

__all__ = ["describe_recipe", "format_loading", "measure_loading", "sample_jpegs"]

_SIZES = ((500, 375), (375, 500), (500, 333), (400, 400), (500, 400), (333, 500))  # ImageNet's common shapes


class _TrainImages(Dataset):
    """Item i: the training transform of image i % n, its RNGs seeded by (0, 0, i) as in training."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], Any]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int) -> Any:
        image = load_rgb(self.paths[i % len(self.paths)])
        with seeded_rngs(sample_seed(0, 0, i)):
            return self.transform(image)


def sample_jpegs(out: Path, count: int = 64, seed: int = 0) -> list[Path]:
    """`count` JPEGs of ImageNet's usual sizes: random crops of matplotlib's sample photograph,
    resized, sometimes mirrored, quality 90."""
    import matplotlib.cbook

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        w, h = _SIZES[k % len(_SIZES)]
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(photo.width * scale), int(photo.height * scale)
        x, y = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
        if k % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(out / f"{k:03d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def measure_loading(
    paths: list[Path],
    transform: Callable[[Image.Image], Any],
    *,
    images: int = 200,
    loader_workers: tuple[int, ...] = (1, 2),
    batch_size: int = 32,
) -> dict[str, Any]:
    """The two measures of the module docstring, as a dict (times in seconds per image)."""
    dataset = _TrainImages(paths, transform)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(min(16, images)):  # warm-up: first calls build caches
            dataset[i]
        start = time.perf_counter()
        for i in range(images):
            load_rgb(paths[i % len(paths)])
        decode = (time.perf_counter() - start) / images
        start = time.perf_counter()
        for i in range(images):
            dataset[i]
        total = (time.perf_counter() - start) / images
    finally:
        torch.set_num_threads(threads)
    loaders = [_time_loader(dataset, workers, batch_size, images) for workers in loader_workers]
    return {
        "images": images,
        "files": len(paths),
        "mean_file_bytes": statistics.mean(p.stat().st_size for p in paths),
        "decode_s": decode,
        "augment_s": total - decode,
        "per_worker_images_per_s": 1 / total,
        "loaders": loaders,
    }


def _time_loader(dataset: Dataset, workers: int, batch_size: int, images: int) -> dict[str, float]:
    """Images/s through a DataLoader with `workers` workers, after its first batches (worker start)."""
    batches = max(2, math.ceil(images / batch_size))
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, shuffle=False, prefetch_factor=2 if workers else None
    )
    it = iter(loader)
    for _ in range(max(1, workers)):  # every worker has started and delivered once
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    rate = batches * batch_size / elapsed
    return {"workers": workers, "images_per_s": rate, "per_worker": rate / max(1, workers)}


def describe_recipe(cfg: Any) -> str:
    """The training transform options of a config (`config.Config`), in one line."""
    return (
        f"random-resized crop (min_crop {cfg.min_crop}, {cfg.interpolation}), hflip {cfg.hflip}, auto_augment "
        f"{cfg.auto_augment} ({cfg.aa_interpolation}), random erasing {cfg.re_prob} {cfg.re_mode} x{cfg.re_count}"
    )


def format_loading(result: dict[str, Any]) -> str:
    """The result as the lines the command prints."""
    lines = [
        f"training transform at {result['image_size']}: {result['transform']}",
        f"images: {result['files']} files of {result['mean_file_bytes'] / 1e3:.0f} kB on average ({result['source']})",
        f"one worker (one thread): {result['per_worker_images_per_s']:.1f} images/s = decode "
        f"{result['decode_s'] * 1e3:.1f} ms + augment {result['augment_s'] * 1e3:.1f} ms per image",
    ]
    for loader in result["loaders"]:
        lines.append(
            f"DataLoader, {loader['workers']} worker(s): {loader['images_per_s']:.1f} images/s "
            f"({loader['per_worker']:.1f} per worker)"
        )
    rate = result["per_worker_images_per_s"]
    lines.append(
        f"to feed T images/s of training per device, set num_parallel_workers >= T / {rate:.0f} "
        "(each worker on a core of its own)"
    )
    return "\n".join(lines)
