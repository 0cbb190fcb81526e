"""Turn the Debian `dataset-fashion-mnist` IDX files into an ImageFolder tree of RGB PNGs.

Fashion-MNIST (Xiao et al., 2017): 60,000 training and 10,000 test greyscale 28x28 images of ten
clothing classes. `prepare_fashion_mnist` writes

    out_dir/train/<class>/<index>.png      out_dir/val/<class>/<index>.png      out_dir/prepared.json

where <index> is the image's position (5 digits) in its source IDX file. Label i of the IDX files
is `FASHION_MNIST_CLASSES[i]`; ImageFolder sorts class names, so a trained model's class indices
follow sorted(FASHION_MNIST_CLASSES) instead (ankle_boot=0, bag=1, coat=2, dress=3, pullover=4,
sandal=5, shirt=6, sneaker=7, t-shirt_top=8, trouser=9).

The tree is written to a hidden temporary sibling folder and renamed into place once complete;
`prepared.json` records the parameters, and a later call with the same parameters does nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conformer_vision.errors import ConfigError, DataError

__all__ = ["FASHION_MNIST_CLASSES", "DEFAULT_SOURCE_DIR", "prepare_fashion_mnist"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
"""Class names in label order (label i -> FASHION_MNIST_CLASSES[i])."""

DEFAULT_SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
_SOURCES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x0803, 0x0801
_HOLDOUT_FRACTION = 6  # val_from='train': the last sixth of the training images (10,000 of 60,000)
_MARKER = "prepared.json"
_SERIAL_BELOW = 2_000  # fewer images than this are written in-process (no pool start-up)

Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # images (N, 28, 28) uint8, labels (N,), source index (N,)


def prepare_fashion_mnist(
    out_dir: str | Path,
    image_size: int = 32,
    source_dir: str | Path = DEFAULT_SOURCE_DIR,
    val_from: str = "test",
    limit_per_class: int | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Write Fashion-MNIST as `out_dir/{train,val}/<class>/*.png` (RGB, image_size^2, bicubic).

    Args:
        out_dir: destination; created, or replaced if it holds an earlier preparation with other
            parameters. A non-empty folder that is not a preparation is refused.
        image_size: side of the written square images.
        source_dir: folder with the four IDX files (`.gz` or uncompressed).
        val_from: 'test' (val = the 10,000 test images) or 'train' (val = the last sixth of the
            training images, 10,000; train = the first 50,000).
        limit_per_class: keep only the first N images of each class in each split (file order).
        num_workers: processes used to encode PNGs; None = all CPUs.

    Returns:
        {"root", "train_dir", "val_dir", "classes" (sorted, as ImageFolder indexes them),
         "label_names" (IDX label order), "num_train", "num_val", "image_size", "created"}.
    """
    out_dir = Path(out_dir)
    params = _check_params(image_size, val_from, limit_per_class)
    marker = _read_marker(out_dir)
    if marker is not None and marker["params"] == params:
        return _summary(out_dir, marker, created=False)
    if marker is None and out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir} exists and is not a Fashion-MNIST preparation (no {_MARKER}); choose another folder or empty it"
        )
    splits = _load_splits(Path(source_dir), val_from, limit_per_class)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        counts = {name: _write_split(tmp / name, split, image_size, num_workers) for name, split in splits.items()}
        marker = {"params": params, "counts": counts}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last: marks completion
        _move_into_place(tmp, out_dir, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out_dir, marker, created=True)


def _check_params(image_size: int, val_from: str, limit_per_class: int | None) -> dict[str, Any]:
    """Validated parameters, as stored in the marker file."""
    if not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive int, got {image_size!r}")
    if val_from not in ("test", "train"):
        raise ConfigError(f"val_from must be 'test' or 'train', got {val_from!r}")
    if limit_per_class is not None and (not isinstance(limit_per_class, int) or limit_per_class < 1):
        raise ConfigError(f"limit_per_class must be None or a positive int, got {limit_per_class!r}")
    return {"image_size": image_size, "val_from": val_from, "limit_per_class": limit_per_class}


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    """The marker of a complete earlier preparation, or None."""
    try:
        marker = json.loads((out_dir / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "params" in marker and "counts" in marker else None


def _summary(out_dir: Path, marker: dict[str, Any], created: bool) -> dict[str, Any]:
    return {
        "root": str(out_dir),
        "train_dir": str(out_dir / "train"),
        "val_dir": str(out_dir / "val"),
        "classes": sorted(FASHION_MNIST_CLASSES),
        "label_names": list(FASHION_MNIST_CLASSES),
        "num_train": marker["counts"]["train"],
        "num_val": marker["counts"]["val"],
        "image_size": marker["params"]["image_size"],
        "created": created,
    }


def _load_splits(source_dir: Path, val_from: str, limit: int | None) -> dict[str, Split]:
    """{'train': split, 'val': split} read from the IDX files, limited per class."""
    train = _read_source(source_dir, "train")
    if val_from == "test":
        val = _read_source(source_dir, "test")
    else:
        cut = len(train[0]) - len(train[0]) // _HOLDOUT_FRACTION
        train, val = tuple(a[:cut] for a in train), tuple(a[cut:] for a in train)
    return {"train": _limit_per_class(train, limit), "val": _limit_per_class(val, limit)}


def _read_source(source_dir: Path, name: str) -> Split:
    """Images, labels and source indices of one IDX pair ('train' or 't10k')."""
    images_name, labels_name = _SOURCES[name]
    images = _read_idx(_find(source_dir, images_name), _IMAGES_MAGIC)
    labels = _read_idx(_find(source_dir, labels_name), _LABELS_MAGIC)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise DataError(f"{source_dir}: {images_name} {images.shape} does not match {labels_name} {labels.shape}")
    return images, labels, np.arange(len(labels))


def _find(source_dir: Path, name: str) -> Path:
    """`name.gz` or `name` in `source_dir`, or a DataError saying how to install the files."""
    for candidate in (source_dir / f"{name}.gz", source_dir / name):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {name}.gz not found in {source_dir}. Install the Debian package "
        f"with: apt-get update && apt-get install -y dataset-fashion-mnist "
        f"(or pass source_dir= a folder holding the four IDX files)"
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode one IDX file (big-endian header: magic, then one uint32 per dimension) to uint8."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}; reinstall dataset-fashion-mnist") from None
    ndim = magic & 0xFF
    header_len = 4 * (1 + ndim)
    header = struct.unpack(f">{1 + ndim}I", raw[:header_len]) if len(raw) >= header_len else (None,)
    shape = tuple(header[1:])
    if header[0] != magic or len(raw) != header_len + int(np.prod(shape)):
        raise DataError(f"{path} is not a valid IDX file (bad magic or size); reinstall dataset-fashion-mnist")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _limit_per_class(split: Split, limit: int | None) -> Split:
    """The first `limit` samples of each label, in file order (all when None)."""
    if limit is None:
        return split
    images, labels, index = split
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit] for c in range(len(FASHION_MNIST_CLASSES))]))
    return images[keep], labels[keep], index[keep]


def _write_split(folder: Path, split: Split, image_size: int, num_workers: int | None) -> int:
    """Write one split's PNGs into per-class folders; returns the number written."""
    images, labels, index = split
    jobs = []
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        rows = np.flatnonzero(labels == label)
        if len(rows) == 0:
            continue  # only with a tiny source; an empty class folder would not load
        (folder / name).mkdir(parents=True)
        jobs += [
            (str(folder / name), images[chunk], index[chunk], image_size)
            for chunk in np.array_split(rows, max(1, len(rows) // 1000))
        ]
    workers = num_workers or os.cpu_count() or 1
    if len(images) < _SERIAL_BELOW or workers == 1:
        return sum(_write_pngs(*job) for job in jobs)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(_write_pngs, *zip(*jobs)))


def _write_pngs(folder: str, images: np.ndarray, index: np.ndarray, image_size: int) -> int:
    """Resize (bicubic) greyscale 28x28 images, save as RGB PNG `<index:05d>.png` under `folder`."""
    for image, i in zip(images, index):
        pil = Image.fromarray(image)  # (28, 28) uint8 -> mode L
        if image_size != pil.width:
            pil = pil.resize((image_size, image_size), Image.Resampling.BICUBIC)
        pil.convert("RGB").save(os.path.join(folder, f"{i:05d}.png"), compress_level=1)
    return len(images)


def _move_into_place(tmp: Path, out_dir: Path, params: dict[str, Any]) -> None:
    """Rename the finished `tmp` to `out_dir`, replacing an empty folder or an older preparation."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / "previous")
    try:
        tmp.rename(out_dir)
    except OSError:
        # Another process may have finished the same preparation first.
        marker = _read_marker(out_dir)
        if marker is None or marker["params"] != params:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
