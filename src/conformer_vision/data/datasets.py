"""ImageFolder datasets with a class list fixed by train, deterministic subsets and a bad-file policy.

Layout: `root/<class name>/<image>`. Hidden entries (names starting with '.') are never classes or
images; class folders are read one level deep (sub-folders inside a class are ignored with a warning).
The split is indexed by `conformer_vision.data.index` (`os.scandir`, no per-file `stat`) into flat
numpy arrays, which loader workers share with the main process without copying them.

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
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

from conformer_vision.data.images import check_image, load_rgb
from conformer_vision.data.index import SUBSET_SEED, FolderIndex, list_classes, scan_split
from conformer_vision.errors import DataError, ImageDecodeError

__all__ = [
    "BAD_POLICIES",
    "EvalLoader",
    "ImageFolderDataset",
    "SUBSET_SEED",
    "build_class_list",
    "check_bad_budget",
    "drop_failed",
    "eval_loader",
    "sample_seed",
    "seeded_rngs",
    "set_loader_epoch",
]

_LOG = logging.getLogger("conformer_vision.data")

BAD_POLICIES = ("replace", "drop")
"""What `ImageFolderDataset` does with an unreadable file: training replaces it, evaluation drops it."""

BUDGET_OPTION = "max_bad_files_fraction"
"""The command-line / config option that sets the bad-file budget, named in the over-budget error."""


def build_class_list(train_root: str | Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `train_root`: the class list of a run.

    Raises:
        DataError: the root is missing, not a folder, or has no class folders.
    """
    return list_classes(_existing_dir(train_root, "training data folder"))


class ImageFolderDataset(Dataset):
    """Images under `root/<class>/`, decoded with `load_rgb`; items are (transform(image), target).

    The samples are a `FolderIndex` (`conformer_vision.data.index`): flat numpy arrays, no Python
    object per image, so loader workers share them with the main process instead of copying them.

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
        index: the split's index when it is already built (`index_splits`: once per job, shared by
            every process); None scans `root` here. Its class list wins over `classes`.
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
        index: FolderIndex | None = None,
    ) -> None:
        if bad_policy not in BAD_POLICIES:
            raise ValueError(f"bad_policy must be one of {BAD_POLICIES}, got {bad_policy!r}")
        self.bad_policy = bad_policy
        self.root = _existing_dir(root, "data folder")
        self.transform = transform
        if index is None:
            index = scan_split(self.root, classes)
        self.classes = list(index.classes)
        self.max_bad_fraction = max_bad_fraction
        self.max_bad_files = max_bad_files
        self.max_substitutions = max_substitutions
        self.index = index.subset(num_samples)
        self._index_bad = [Path(p) for p in index.rejected]
        # One byte per sample in shared memory: workers mark failures, the main process reads them.
        self._bad_mask = torch.zeros(len(self.index), dtype=torch.uint8).share_memory_()
        self._check_budget()

    def __len__(self) -> int:
        return len(self.index)

    def path(self, i: int) -> str:
        """The file of sample `i`."""
        return self.index.path(i)

    def target(self, i: int) -> int:
        """The class index of sample `i`."""
        return int(self.index.labels[i])

    @property
    def labels(self) -> np.ndarray:
        """The class index of every sample (int32, read-only use)."""
        return self.index.labels

    @property
    def targets(self) -> list[int]:
        """The class index of every sample, as a new list (torchvision's attribute)."""
        return self.index.labels.tolist()

    @property
    def samples(self) -> list[tuple[Path, int]]:
        """Every (path, target), as a new list built on each access (torchvision's attribute; the
        dataset itself keeps flat arrays: do not hold this list in loader workers)."""
        return [(Path(self.index.path(i)), int(self.index.labels[i])) for i in range(len(self))]

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
            try:
                image = load_rgb(self.path(idx))
            except ImageDecodeError as err:
                self._record_bad(idx, err)
                return None
            return (self.transform(image) if self.transform else image), self.target(idx)
        for step in range(self.max_substitutions + 1):
            i = (idx + step) % len(self)
            try:
                image = load_rgb(self.path(i))
            except ImageDecodeError as err:
                self._record_bad(i, err)
                continue
            return (self.transform(image) if self.transform else image), self.target(i)
        raise DataError(
            f"{self.max_substitutions + 1} consecutive unreadable images from "
            f"{self.path(idx)} on; run a data check (verify) on {self.root}"
        )

    @property
    def bad_files(self) -> list[Path]:
        """Entries known to be unreadable so far (this process and its loader workers), sorted."""
        found = [Path(self.path(i)) for i in self._bad_mask.nonzero().flatten().tolist()]
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
        for i in range(len(self)):
            try:
                check_image(self.path(i), full=full)
            except ImageDecodeError as err:
                self._record_bad(i, err)
        return self.bad_files

    @property
    def num_entries(self) -> int:
        """Samples plus the image-named entries dropped while indexing: what the budget is a fraction of."""
        return len(self) + len(self._index_bad)

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
        check_bad_budget(
            num_bad, self.num_entries, self.root, self.max_bad_fraction, self.max_bad_files, lambda: self.bad_files
        )


def check_bad_budget(
    num_bad: int,
    num_entries: int,
    where: object,
    max_bad_fraction: float,
    max_bad_files: int | None,
    bad_files: Callable[[], Sequence[object]],
) -> None:
    """Raise the over-budget DataError when `num_bad` of `num_entries` exceeds the budget (an
    absolute `max_bad_files`, else `max_bad_fraction` of the entries: the commands'
    `max_bad_files_fraction`). `bad_files()` names them (called only then)."""
    budget_count = max_bad_files if max_bad_files is not None else math.floor(max_bad_fraction * num_entries)
    if num_bad <= budget_count:
        return
    shown = ", ".join(str(p) for p in bad_files()[:5])
    if max_bad_files is not None:
        budget = f"budget {budget_count} unreadable files"
        fix = "raise the budget"
    else:
        budget = f"budget {budget_count}: {BUDGET_OPTION} {max_bad_fraction:g} of the entries"
        fix = f"raise --{BUDGET_OPTION} (e.g. --{BUDGET_OPTION} {_roomier_fraction(num_bad, num_entries)})"
    # With loader workers the count can include a file another worker marked meanwhile.
    raise DataError(
        f"too many unreadable images under {where}: {num_bad} of {num_entries} ({budget}). "
        f"First: {shown}. Fix or remove them, or {fix}."
    )


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
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=drop_failed,
        **extra,
    )
    return EvalLoader(loader)


def _existing_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, or DataError when it is not a directory."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist or is not a directory")
    return path


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


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the sample order of the next pass, and the seeds of workers it starts, depend only on
    (seed, epoch, rank): `loader` draws from a `DistributedSampler` and has its own generator (the
    training loader of `train.build_data`). A dataset with its own `set_epoch` (shards) is told the
    epoch instead."""
    if isinstance(loader.dataset, IterableDataset) and hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)  # a stream that orders itself (data.shards.ShardDataset)
        return
    sampler = loader.sampler
    if not isinstance(sampler, DistributedSampler) or loader.generator is None:
        raise TypeError("set_loader_epoch expects a loader with a DistributedSampler and its own generator")
    sampler.set_epoch(epoch)
    # The loader draws each pass's worker base seed from its generator.
    loader.generator.manual_seed((sampler.seed * 1_000_003 + epoch * 1_009 + sampler.rank) % 2**63)
