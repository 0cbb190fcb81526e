"""The sample index of a class-folder split: fast to build, a few flat arrays to hold, built once per job.

`scan_split(root, classes)` lists `root/<class>/<image>` with `os.scandir` alone: the entry types
come from the directory listing (`d_type`), so no file is `stat`-ed (only symlinks, and entries of
file systems that do not report types, cost a `stat`, as they do for `os.walk`), and no `Path`
object is made per file. The rules are those of `ImageFolderDataset`:

* names starting with '.' are never classes or images (`.git`, `.ipynb_checkpoints`, `._x.jpg`);
* an image is a regular file (or a link to one) directly in a class folder whose name ends in one
  of `IMAGE_EXTENSIONS`, case-insensitively; a sub-folder inside a class folder is ignored with a
  warning; an entry with an image name that is not a file (a directory called `x.jpg`) is
  `rejected` (logged, and counted against the bad-file budget by the dataset);
* classes are looked up by name in the run's class list (from the training split); a folder that
  is not in it is an error, a class without a folder only warns; a class folder without images is
  an error naming it;
* samples are sorted by class folder name, then by file name (as `str`), so indices are stable.

`FolderIndex` holds the result as flat numpy arrays: every file name, UTF-8 encoded, in one byte
buffer (`np.uint8`), with one start offset and one length per sample, and the labels in an int32
array. There is no Python object per sample, so DataLoader worker processes, which share the
parent's memory pages after `fork`, never write to these pages (reading a numpy array does not touch
reference counts) and do not grow private copies of them: ~35 bytes per image instead of the ~500 of a
list of `(Path, int)` tuples, whose reference counts every worker increments on access.

`index_splits(...)` builds the indexes of a run's splits once per job: under `torch.distributed`
global rank 0 scans and sends the arrays to every other process (`broadcast_object_list`); the other
processes do not touch the file system. An error found while scanning (no class folder, an unknown
val class, an empty class folder) is sent instead and raised on every rank.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from conformer_vision.data.images import IMAGE_EXTENSIONS
from conformer_vision.errors import ConfigError, ConformerError, DataError

__all__ = ["FolderIndex", "SUBSET_SEED", "index_splits", "list_classes", "scan_split"]

_LOG = logging.getLogger("conformer_vision.data")

SUBSET_SEED = 0
"""Seed of the fixed `num_samples` subset; independent of the run seed so subsets never move."""

_EXTENSIONS = frozenset(ext[1:] for ext in IMAGE_EXTENSIONS)  # without the dot, for rpartition
_EXTENSION_LIST = "jpg, jpeg, png, bmp, gif, tif, tiff, webp, ppm, pgm, pbm"


def _has_image_name(name: str) -> bool:
    """`Path(name).suffix.lower() in IMAGE_EXTENSIONS`, without making a Path."""
    stem, dot, ext = name.rpartition(".")
    return bool(dot and stem) and ext.lower() in _EXTENSIONS


@dataclass
class FolderIndex:
    """The samples of one split as flat arrays (module docstring).

    Attributes:
        root: the split folder.
        classes: the run's class list; `labels` index into it.
        names: every file name, UTF-8 (`surrogateescape` for undecodable bytes), concatenated.
        starts, lengths: where sample i's file name lies in `names`.
        labels: class index of each sample.
        rejected: entries with an image name that are not files (full paths), found while scanning.
    """

    root: str
    classes: list[str]
    names: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    rejected: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        """File name of sample `i` (inside its class folder)."""
        start = int(self.starts[i])
        return self.names[start : start + int(self.lengths[i])].tobytes().decode("utf-8", "surrogateescape")

    def path(self, i: int) -> str:
        """Full path of sample `i`: root/<class>/<name>."""
        return os.path.join(self.root, self.classes[int(self.labels[i])], self.name(i))

    def subset(self, num_samples: int) -> FolderIndex:
        """All samples for -1, else a fixed random subset of `num_samples` (the same files every
        time, whatever the run seed), kept in index order. The name buffer is shared, not copied."""
        if num_samples == -1 or num_samples >= len(self):
            return self
        if num_samples < 1:
            raise ConfigError(f"num_samples must be -1 (all) or a positive count, got {num_samples}")
        keep = np.sort(subset_positions(len(self), num_samples))
        return FolderIndex(
            self.root, self.classes, self.names, self.starts[keep], self.lengths[keep], self.labels[keep], self.rejected
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the name buffer counted once)."""
        return sum(a.nbytes for a in (self.names, self.starts, self.lengths, self.labels))


def subset_positions(total: int, num_samples: int) -> np.ndarray:
    """The positions (unsorted) of the fixed `num_samples` subset of `total` samples: the first
    `num_samples` of a permutation drawn from `SUBSET_SEED`, as the data layer always chose them."""
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(total, generator=generator)[:num_samples].numpy()


def list_classes(root: str | Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders (or links to folders) of `root`.

    Raises:
        DataError: `root` is missing or not a folder, or has no class folders.
    """
    root = os.fspath(root)
    try:
        with os.scandir(root) as entries:
            classes = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"data folder {root} does not exist or is not a directory") from None
    except PermissionError:
        raise DataError(f"data folder {root} cannot be read (permission denied)") from None
    if not classes:
        raise DataError(
            f"no class folders in {root}: expected one sub-folder of images per class (root/<class>/<image>)"
        )
    return classes


def scan_split(root: str | Path, classes: Sequence[str] | None = None) -> FolderIndex:
    """Index `root/<class>/<image>` (module docstring); `classes` None: the split's own folders.

    Raises:
        DataError: no class folders, a folder not in `classes`, or a class folder without images.
    """
    root = os.fspath(root)
    found = list_classes(root)
    classes = list(classes) if classes is not None else found
    _check_classes(root, found, classes)
    position = {name: i for i, name in enumerate(classes)}
    names: list[str] = []
    counts: list[int] = []
    labels: list[int] = []
    rejected: list[str] = []
    for class_name in found:
        images = _scan_class_folder(os.path.join(root, class_name), rejected)
        names += images
        counts.append(len(images))
        labels.append(position[class_name])
    return _pack(root, classes, names, np.repeat(np.asarray(labels, np.int32), counts), rejected)


def _scan_class_folder(folder: str, rejected: list[str]) -> list[str]:
    """Sorted image file names directly in `folder`; image-named non-files are appended to
    `rejected` (and logged).

    Raises:
        DataError: the folder holds no image file.
    """
    images: list[str] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            if _has_image_name(name):
                if entry.is_file():
                    images.append(name)
                else:
                    _LOG.warning("skipping %s: has an image name but is not a file", entry.path)
                    rejected.append(entry.path)
            elif entry.is_dir():
                _LOG.warning("ignoring sub-folder %s: images must sit directly in the class folder", entry.path)
    if not images:
        raise DataError(
            f"class folder {folder} contains no images (extensions: {_EXTENSION_LIST}); add images or remove the folder"
        )
    images.sort()
    return images


def _pack(root: str, classes: list[str], names: list[str], labels: np.ndarray, rejected: list[str]) -> FolderIndex:
    """The names joined into one NUL-separated UTF-8 buffer (no file name can hold a NUL byte), the
    offsets found with one vectorised search for the separators."""
    if names:
        buffer = ("\0".join(names) + "\0").encode("utf-8", "surrogateescape")
        joined = np.frombuffer(buffer, dtype=np.uint8)  # read-only: nothing ever writes these pages
        ends = np.flatnonzero(joined == 0)
    else:
        joined, ends = np.zeros(0, np.uint8), np.zeros(0, np.int64)
    starts = np.empty(len(ends), dtype=np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = (ends - starts).astype(np.uint16)  # NAME_MAX is 255 bytes, 1020 with 4-byte characters
    return FolderIndex(root, classes, joined, starts, lengths, labels, sorted(rejected))


def _check_classes(root: str, found: list[str], known: list[str]) -> None:
    """Folders of `root` must be known classes; known classes may be missing (warning)."""
    known_set, found_set = set(known), set(found)
    unknown = [name for name in found if name not in known_set]
    if unknown:
        raise DataError(
            f"{root} has class folder(s) {unknown} that are not in the class list built "
            f"from the training data; known classes ({len(known)}): {known}"
        )
    missing = [name for name in known if name not in found_set]
    if missing:
        _LOG.warning("%s has no folder for %d class(es): %s", root, len(missing), missing)


def index_splits(train_root: str | Path, others: Sequence[str | Path] = ()) -> list[FolderIndex]:
    """The indexes of `train_root` (its own class list) and of each of `others` (by the training
    class list), built once per job: by this process alone, or under `torch.distributed` by global
    rank 0 and sent to the others (module docstring). Rank 0 logs the time it took."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and dist.get_rank() != 0:
        received: list[object] = [None]
        dist.broadcast_object_list(received, src=0)
        return _unpack(received[0])
    try:
        start = time.perf_counter()
        train = scan_split(train_root)
        indexes = [train] + [scan_split(root, train.classes) for root in others]
        _LOG.info(
            "indexed %s in %.2f s (%s)",
            ", ".join(f"{len(ix):,} images of {ix.root}" for ix in indexes),
            time.perf_counter() - start,
            "rank 0, sent to every process" if distributed else "this process",
        )
        payload: object = indexes
    except ConformerError as err:  # the others must not wait for an index that never comes
        payload = err
    if distributed:
        dist.broadcast_object_list([payload], src=0)
    return _unpack(payload)


def _unpack(payload: object) -> list[FolderIndex]:
    """What `index_splits` sent: the indexes, or the error rank 0 met, raised here too."""
    if isinstance(payload, BaseException):
        raise payload
    assert isinstance(payload, list)
    return payload
