"""ImageFolder datasets with a class list fixed by train, deterministic subsets and a bad-file policy.

Layout: `root/<class name>/<image>`. Hidden entries (names starting with '.') are never classes or
images; class folders are read one level deep (sub-folders inside a class are ignored with a warning).

Class list: built once from the training root (`build_class_list`), stored in checkpoints, and passed
as `classes=` to every other split, so labels are looked up by name. A val folder whose name is not in
the list is an error; a train class without val images only warns.

Bad files (truncated, empty, not an image, decompression bomb, a directory named `x.jpg`): a directory
with an image name is found while indexing and dropped from the samples. A file that fails to decode
in `__getitem__` is logged (logger `conformer_vision.data`) and then handled by `bad_policy`:

* `"replace"` (training): replaced by the next index ((idx + 1) % len, then idx + 2, ...), so every
  rank still yields its full share of samples and distributed batches stay aligned; the label
  returned is the substitute's own.
* `"drop"` (evaluation): the item is None, and `drop_failed` (the collate function of
  `eval_loader`) leaves it out of its batch, so metrics count every readable image exactly once and
  no unreadable one; a duplicated neighbour would be counted twice.

Failures are marked in a byte mask held in shared memory, so `bad_files` read in the main process
also sees what DataLoader worker processes found (fork or spawn). Once more than the budget
(`max_bad_files`, or else `max_bad_fraction` of all entries: the `max_bad_files_fraction` option of
the commands) is known bad, `DataError` is raised; in a worker the loader re-raises it in the main
process. `verify()` finds bad files up front without training.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from conformer_vision.data.images import check_image, is_hidden, is_image_file, load_rgb
from conformer_vision.errors import ConfigError, DataError, ImageDecodeError

__all__ = [
    "BAD_POLICIES", "EvalLoader", "ImageFolderDataset", "build_class_list", "build_loader", "drop_failed",
    "eval_loader", "sample_seed", "seeded_rngs", "set_loader_epoch",
]  # fmt: skip

_LOG = logging.getLogger("conformer_vision.data")

SUBSET_SEED = 0
"""Seed of the fixed `num_samples` subset; independent of the run seed so subsets never move."""

BAD_POLICIES = ("replace", "drop")
"""What `ImageFolderDataset` does with an unreadable file: training replaces it, evaluation drops it."""

BUDGET_OPTION = "max_bad_files_fraction"
"""The command-line / config option that sets the bad-file budget, named in the over-budget error."""


def build_class_list(train_root: str | Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `train_root`: the class list of a run.

    Raises:
        DataError: the root is missing, not a folder, or has no class folders.
    """
    root = _existing_dir(train_root, "training data folder")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not is_hidden(entry))
    if not classes:
        raise DataError(f"no class folders in {root}: expected one sub-folder of images per class "
                        f"(root/<class>/<image>)")
    return classes


class ImageFolderDataset(Dataset):
    """Images under `root/<class>/`, decoded with `load_rgb`; items are (transform(image), target).

    Args:
        root: split folder, one sub-folder per class.
        transform: PIL RGB image -> tensor; None returns the PIL image.
        classes: the run's class list (from `build_class_list` on train); None builds it from `root`.
        num_samples: -1 for all samples, else a fixed subset of this size (same files every time).
        max_bad_fraction: abort when more than this fraction of entries is found bad (the commands'
            `max_bad_files_fraction` option).
        max_bad_files: absolute budget that replaces `max_bad_fraction` when given.
        max_substitutions: consecutive bad indices tried before giving up on one item ("replace").
        bad_policy: "replace" (training: the next readable index stands in) or "drop" (evaluation:
            the item is None; batch with `eval_loader`, which leaves it out).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        num_samples: int = -1,
        max_bad_fraction: float = 0.01,
        max_bad_files: int | None = None,
        max_substitutions: int = 10,
        bad_policy: str = "replace",
    ) -> None:
        if bad_policy not in BAD_POLICIES:
            raise ValueError(f"bad_policy must be one of {BAD_POLICIES}, got {bad_policy!r}")
        self.bad_policy = bad_policy
        self.root = _existing_dir(root, "data folder")
        self.transform = transform
        self.classes = list(classes) if classes is not None else build_class_list(self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.max_bad_fraction = max_bad_fraction
        self.max_bad_files = max_bad_files
        self.max_substitutions = max_substitutions
        samples, not_files = self._index()
        self.samples = _subset(samples, num_samples)
        self.targets = [target for _, target in self.samples]
        self._index_bad = not_files
        # One byte per sample in shared memory: workers mark failures, the main process reads them.
        self._bad_mask = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()
        self._check_budget()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int | tuple[int, int]) -> tuple[Any, int] | None:
        """(transform(image), target) of `idx`; if it is unreadable, that of the next readable index
        ("replace") or None ("drop").

        `idx` may be a pair (index, seed): the transform then draws its randomness from RNGs seeded
        with `seed` (`seeded_rngs`), so the augmentation is a function of the pair alone, in any
        process or loader worker."""
        if isinstance(idx, tuple):
            index, seed = idx
            with seeded_rngs(seed):
                return self[index]
        if self.bad_policy == "drop":
            path, target = self.samples[idx]
            try:
                image = load_rgb(path)
            except ImageDecodeError as err:
                self._record_bad(idx, err)
                return None
            return (self.transform(image) if self.transform else image), target
        for step in range(self.max_substitutions + 1):
            i = (idx + step) % len(self.samples)
            path, target = self.samples[i]
            try:
                image = load_rgb(path)
            except ImageDecodeError as err:
                self._record_bad(i, err)
                continue
            return (self.transform(image) if self.transform else image), target
        raise DataError(f"{self.max_substitutions + 1} consecutive unreadable images from "
                        f"{self.samples[idx][0]} on; run a data check (verify) on {self.root}")

    @property
    def bad_files(self) -> list[Path]:
        """Entries known to be unreadable so far (this process and its loader workers), sorted."""
        found = [self.samples[i][0] for i in self._bad_mask.nonzero().flatten().tolist()]
        return sorted(self._index_bad + found)

    @property
    def bad_budget(self) -> int:
        """How many bad entries are tolerated; one more raises DataError."""
        if self.max_bad_files is not None:
            return self.max_bad_files
        return math.floor(self.max_bad_fraction * self.num_entries)

    def verify(self, full: bool = False) -> list[Path]:
        """Check every sample now; return the bad files (raises DataError over budget).

        The default reads headers only (missing, empty, not an image, decompression bomb); `full`
        decodes every pixel, which also finds truncated files but costs a pass over the data.
        """
        for i, (path, _) in enumerate(self.samples):
            try:
                check_image(path, full=full)
            except ImageDecodeError as err:
                self._record_bad(i, err)
        return self.bad_files

    @property
    def num_entries(self) -> int:
        """Samples plus the image-named entries dropped while indexing: what the budget is a fraction of."""
        return len(self.samples) + len(self._index_bad)

    def _record_bad(self, i: int, err: ImageDecodeError) -> None:
        """Log and mark sample `i` bad (once), then enforce the budget."""
        if not self._bad_mask[i]:
            self._bad_mask[i] = 1
            if self.bad_policy == "drop":
                _LOG.warning("dropping unreadable image %s (not counted): %s", err.path, err.reason)
            else:
                _LOG.warning("skipping unreadable image %s: %s", err.path, err.reason)
        self._check_budget()

    def _check_budget(self) -> None:
        num_bad = len(self._index_bad) + int(self._bad_mask.sum())
        if num_bad > self.bad_budget:
            shown = ", ".join(str(p) for p in self.bad_files[:5])
            if self.max_bad_files is not None:
                budget = f"budget {self.bad_budget} unreadable files"
                fix = "raise the budget"
            else:
                budget = f"budget {self.bad_budget}: {BUDGET_OPTION} {self.max_bad_fraction:g} of the entries"
                fix = f"raise --{BUDGET_OPTION} (e.g. --{BUDGET_OPTION} {_roomier_fraction(num_bad, self.num_entries)})"
            # With loader workers the count can include a file another worker marked meanwhile.
            raise DataError(
                f"too many unreadable images under {self.root}: {num_bad} of {self.num_entries} ({budget}). "
                f"First: {shown}. Fix or remove them, or {fix}.")

    def _index(self) -> tuple[list[tuple[Path, int]], list[Path]]:
        """(samples sorted by class then path, entries with an image name that are not files)."""
        found = build_class_list(self.root)
        _check_classes(self.root, found, self.classes)
        samples: list[tuple[Path, int]] = []
        not_files: list[Path] = []
        for name in found:
            images, rejected = _scan_class_folder(self.root / name)
            samples += [(path, self.class_to_idx[name]) for path in images]
            not_files += rejected
        return samples, not_files


def _roomier_fraction(num_bad: int, num_entries: int) -> str:
    """A `max_bad_files_fraction` that would tolerate `num_bad` of `num_entries` (for the hint)."""
    needed = num_bad / max(num_entries, 1)
    return f"{min(1.0, math.ceil(needed * 1000) / 1000):g}"


def drop_failed(batch: list[tuple[Any, int] | None]) -> tuple[Any, Any] | None:
    """Collate function of `bad_policy="drop"` datasets: the items that were read, batched by
    `default_collate`; None when none was (the batch is skipped by `EvalLoader`)."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


class EvalLoader:
    """Re-iterable (images, targets) batches of a `bad_policy="drop"` dataset, in order, without the
    unreadable images (a batch may be smaller than `batch_size`; one with no readable image is
    skipped). `len()` is the number of batches before dropping."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return (batch for batch in self.loader if batch is not None)

    def __len__(self) -> int:
        return len(self.loader)


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    prefetch: int | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> EvalLoader:
    """An in-order loader over `dataset` (an `ImageFolderDataset` with `bad_policy="drop"`, or a
    `Subset` of one) that leaves unreadable images out of the batches (`drop_failed`).

    `prefetch` is the number of batches decoded ahead in total over the workers (DataLoader counts
    per worker); None keeps DataLoader's default."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch is not None:
            extra["prefetch_factor"] = max(1, math.ceil(prefetch / num_workers))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=pin_memory, collate_fn=drop_failed, **extra)  # fmt: skip
    return EvalLoader(loader)


def _existing_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, or DataError when it is not a directory."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist or is not a directory")
    return path


def _check_classes(root: Path, found: list[str], known: list[str]) -> None:
    """Folders of `root` must be known classes; known classes may be missing (warning)."""
    unknown = [name for name in found if name not in set(known)]
    if unknown:
        raise DataError(f"{root} has class folder(s) {unknown} that are not in the class list built "
                        f"from the training data; known classes ({len(known)}): {known}")
    missing = [name for name in known if name not in set(found)]
    if missing:
        _LOG.warning("%s has no folder for %d class(es): %s", root, len(missing), missing)


def _scan_class_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, image-named entries that are not files) directly in `folder`, sorted.

    Raises:
        DataError: the folder holds no image file.
    """
    images: list[Path] = []
    rejected: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_hidden(entry):
            continue
        if is_image_file(entry) and entry.is_file():
            images.append(entry)
        elif is_image_file(entry):
            _LOG.warning("skipping %s: has an image name but is not a file", entry)
            rejected.append(entry)
        elif entry.is_dir():
            _LOG.warning("ignoring sub-folder %s: images must sit directly in the class folder", entry)
    if not images:
        raise DataError(f"class folder {folder} contains no images (extensions: jpg, jpeg, png, bmp, "
                        f"gif, tif, tiff, webp, ppm, pgm, pbm); add images or remove the folder")
    return images, rejected


def _subset(samples: list[tuple[Path, int]], num_samples: int) -> list[tuple[Path, int]]:
    """All samples for -1, else a fixed random subset of `num_samples`, kept in sorted order."""
    if num_samples == -1 or num_samples >= len(samples):
        return samples
    if num_samples < 1:
        raise ConfigError(f"num_samples must be -1 (all) or a positive count, got {num_samples}")
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    chosen = torch.randperm(len(samples), generator=generator)[:num_samples]
    return [samples[i] for i in sorted(chosen.tolist())]


_MASK64 = 2**64 - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of sample `index` in `epoch` of a run seeded
    `seed` (splitmix64's finaliser over a linear combination; cheap enough for every sample)."""
    x = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed the global RNGs image transforms draw from (python's `random`, numpy's, torch's CPU
    generator; CUDA's are left alone) with `seed` for the block, and put their states back after:
    the caller's random streams (dropout, mixup) do not move."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool,
    distributed: bool | None = None,
    persistent_workers: bool = True,
) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch, rank).

    The sampler is always a `DistributedSampler`: with this process's rank and world size when
    `distributed` (None = whenever torch.distributed is initialised), else with one replica. Call
    `set_loader_epoch(loader, epoch)` before each epoch. Without drop_last, the distributed sampler
    pads the last round with repeated samples so that all ranks get the same count.

    Memory is pinned only when CUDA is available. Worker processes are seeded from the loader's
    generator when they start; with `persistent_workers` (used when num_workers > 0) they start once,
    so their augmentation streams then run on across epochs. Pass `persistent_workers=False` when
    every epoch's augmentations must depend on (seed, epoch, rank) alone (exact resume with workers).
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_loader(distributed=True) needs torch.distributed to be initialised")
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                        persistent_workers=persistent_workers and num_workers > 0,
                        generator=torch.Generator())
    set_loader_epoch(loader, 0)
    return loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the sample order of the next pass, and the seeds of workers it starts, depend only on
    (seed, epoch, rank)."""
    sampler = loader.sampler
    if not isinstance(sampler, DistributedSampler) or loader.generator is None:
        raise TypeError("set_loader_epoch expects a loader made by build_loader")
    sampler.set_epoch(epoch)
    # The loader draws each pass's worker base seed from its generator.
    loader.generator.manual_seed((sampler.seed * 1_000_003 + epoch * 1_009 + sampler.rank) % 2**63)
