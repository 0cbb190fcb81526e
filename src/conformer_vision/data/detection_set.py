"""A small real detection set: Fashion-MNIST items pasted on larger canvases, with COCO annotations.

`prepare_detection_set` writes

    out_dir/train/000001.png ...   out_dir/annotations/instances_train.json
    out_dir/val/000001.png ...     out_dir/annotations/instances_val.json
    out_dir/prepared.json

Each canvas (square, RGB, greyscale content) has a light noise background and 1 to `max_objects`
Fashion-MNIST items, each resized to a random side in [min_size, max_size] and pasted where it
overlaps no other item. An object's box is the tight box of its visible pixels (not the pasted
square), so trousers are tall, bags wide. Categories are the ten Fashion-MNIST classes in label
order with COCO ids 1..10 (`category_id = label + 1`, which is also the torchvision detection label,
0 being the background). Train canvases use only items of Fashion-MNIST's training split, val canvases
only items of its test split, so no garment is in both. A fixed seed makes the set reproducible.

`DetectionDataset` reads a split back as (image tensor, torchvision target) pairs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from conformer_vision.data.fashion_mnist import DEFAULT_SOURCE_DIR, FASHION_MNIST_CLASSES, prepare_fashion_mnist
from conformer_vision.errors import ConfigError, DataError

__all__ = [
    "DetectionDataset",
    "DetectionSetParams",
    "coco_categories",
    "collate_detection",
    "prepare_detection_set",
    "render_canvas",
]

_MARKER = "prepared.json"
_KIND = "fashion-mnist-detection"
_SPLITS = ("train", "val")
_ITEM_THRESHOLD = 48  # item pixels at least this bright (of 255) define its box; brighter than any background
_BACKGROUND_MAX = 40  # background noise is uniform in [0, _BACKGROUND_MAX]
_PLACEMENT_TRIES = 50  # random positions tried per item before it is left out


@dataclass(frozen=True)
class DetectionSetParams:
    """What a detection set is made of; stored in `prepared.json`, equal params = the same set."""

    num_train: int = 2000
    """canvases in the train split"""
    num_val: int = 200
    """canvases in the val split"""
    canvas_size: int = 128
    """side of the square canvases, pixels"""
    min_size: int = 20
    """smallest side an item is resized to, pixels"""
    max_size: int = 64
    """largest side an item is resized to, pixels"""
    max_objects: int = 5
    """items per canvas are drawn uniformly from 1..max_objects (fewer when they do not fit)"""
    items_per_class: int = 300
    """Fashion-MNIST items per class and split the canvases draw from"""
    seed: int = 0
    """seed of every random choice"""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
                raise ConfigError(f"detection set: {name} must be a positive int, got {value!r}")
        if not 8 <= self.min_size <= self.max_size <= self.canvas_size:
            raise ConfigError(
                f"detection set: need 8 <= min_size <= max_size <= canvas_size, got "
                f"{self.min_size}, {self.max_size}, {self.canvas_size}"
            )


def coco_categories() -> list[dict[str, Any]]:
    """COCO categories of the set: ids 1..10 in Fashion-MNIST label order."""
    return [{"id": i + 1, "name": name, "supercategory": "clothing"} for i, name in enumerate(FASHION_MNIST_CLASSES)]


def prepare_detection_set(
    out_dir: str | Path, params: DetectionSetParams | None = None, source_dir: str | Path = DEFAULT_SOURCE_DIR
) -> dict[str, Any]:
    """Write the detection set into `out_dir` once; a later call with the same params does nothing.

    Args:
        out_dir: destination; created. A folder holding this set with other params, or anything
            else that is not empty, is refused (nothing is ever removed from it).
        params: what to generate (defaults: 2000 train and 200 val canvases of 128 px).
        source_dir: the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist by default).

    Returns:
        {"root", "params", "counts": {split: {"images", "objects"}}, "annotations": {split: path},
         "image_dirs": {split: path}, "created"}.
    """
    out_dir = Path(out_dir)
    params = params or DetectionSetParams()
    marker = _read_marker(out_dir)
    if marker is not None:
        if marker["params"] != asdict(params):
            raise DataError(
                f"{out_dir} holds a detection set made with other parameters ({marker['params']}); "
                f"choose another folder, or remove it yourself to regenerate"
            )
        return _summary(out_dir, marker, created=False)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir} exists and is not a detection set (no {_MARKER}); choose another folder or empty it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        items = _load_items(tmp / "items", params.items_per_class, source_dir)
        shutil.rmtree(tmp / "items")
        counts = {}
        for index, split in enumerate(_SPLITS):
            num = params.num_train if split == "train" else params.num_val
            rng = np.random.default_rng([params.seed, index])
            counts[split] = _write_split(tmp, split, num, items[split], params, rng)
        marker = {"kind": _KIND, "params": asdict(params), "counts": counts}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last: marks completion
        _move_into_place(tmp, out_dir, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out_dir, marker, created=True)


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    """The marker of a complete detection set in `out_dir`, or None."""
    try:
        marker = json.loads((out_dir / _MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and marker.get("kind") == _KIND and "params" in marker and "counts" in marker
    return marker if ok else None


def _summary(out_dir: Path, marker: dict[str, Any], created: bool) -> dict[str, Any]:
    return {
        "root": str(out_dir),
        "params": marker["params"],
        "counts": marker["counts"],
        "annotations": {s: str(out_dir / "annotations" / f"instances_{s}.json") for s in _SPLITS},
        "image_dirs": {s: str(out_dir / s) for s in _SPLITS},
        "created": created,
    }


def _load_items(folder: Path, per_class: int, source_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST items as {split: (images (N, 28, 28) uint8, labels (N,))}; train from the
    training split, val from the test split.

    They are read through `prepare_fashion_mnist` (28 px class folders in a scratch folder), the one
    reader of the IDX files, rather than decoding the IDX files a second time here.
    """
    prepared = prepare_fashion_mnist(
        folder, image_size=28, source_dir=source_dir, val_from="test", limit_per_class=per_class, num_workers=1
    )
    items = {}
    for split, root in (("train", prepared["train_dir"]), ("val", prepared["val_dir"])):
        images, labels = [], []
        for label, name in enumerate(FASHION_MNIST_CLASSES):
            for path in sorted(Path(root, name).glob("*.png")):
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("L")))
                labels.append(label)
        items[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return items


def _write_split(
    root: Path,
    split: str,
    num: int,
    items: tuple[np.ndarray, np.ndarray],
    params: DetectionSetParams,
    rng: np.random.Generator,
) -> dict[str, int]:
    """Render `num` canvases of `split` into root/split and its COCO file; returns the counts."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num + 1):
        canvas, objects = render_canvas(items, params, rng)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(canvas).convert("RGB").save(root / split / file_name, compress_level=1)
        images.append(
            {"id": image_id, "file_name": file_name, "width": params.canvas_size, "height": params.canvas_size}
        )
        for label, (x0, y0, x1, y1) in objects:
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": f"Fashion-MNIST items on {params.canvas_size} px canvases ({split})",
            "version": "1",
            "params": asdict(params),
        },
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return {"images": len(images), "objects": len(annotations)}


def render_canvas(
    items: tuple[np.ndarray, np.ndarray], params: DetectionSetParams, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """One greyscale canvas (S, S) uint8 and its objects [(label, (x0, y0, x1, y1))], boxes in pixel
    edges (x1, y1 exclusive), drawn from `items` (images (N, 28, 28), labels (N,))."""
    size = params.canvas_size
    canvas = rng.integers(0, _BACKGROUND_MAX + 1, (size, size), dtype=np.uint8)
    taken: list[tuple[int, int, int]] = []  # pasted squares (x, y, side): items never overlap
    objects = []
    for _ in range(int(rng.integers(1, params.max_objects + 1))):
        index = int(rng.integers(len(items[1])))
        side = int(rng.integers(params.min_size, params.max_size + 1))
        spot = _free_spot(taken, side, size, rng)
        if spot is None:
            continue  # the canvas is too full for this one
        item = np.asarray(Image.fromarray(items[0][index]).resize((side, side), Image.Resampling.BICUBIC))
        rows, cols = np.nonzero(item >= _ITEM_THRESHOLD)
        if len(rows) == 0:
            continue  # an (almost) black item has nothing to detect
        x, y = spot
        region = canvas[y : y + side, x : x + side]
        np.maximum(region, item, out=region)  # bright garments on a dark background
        taken.append((x, y, side))
        box = (x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1)
        objects.append((int(items[1][index]), box))
    return canvas, objects


def _free_spot(
    taken: list[tuple[int, int, int]], side: int, size: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    """A top-left corner where a `side` square fits on the canvas without touching `taken` ones."""
    for _ in range(_PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if all(x + side <= tx or tx + ts <= x or y + side <= ty or ty + ts <= y for tx, ty, ts in taken):
            return x, y
    return None


def _move_into_place(tmp: Path, out_dir: Path, marker: dict[str, Any]) -> None:
    """Rename the finished `tmp` to `out_dir` (absent or an empty folder)."""
    if out_dir.exists():
        out_dir.rmdir()  # checked empty by the caller; rmdir refuses anything else
    try:
        tmp.rename(out_dir)
    except OSError:
        # Another process may have finished the same preparation first.
        if _read_marker(out_dir) != marker:
            raise


class DetectionDataset(torch.utils.data.Dataset):
    """A split of a detection set as torchvision detection samples.

    Item i is ``(image, target)``: image (3, H, W) float in [0, 1]; target ``{"boxes": (N, 4) float
    x0, y0, x1, y1, "labels": (N,) int64 in 1..10, "image_id": int}``, what torchvision's detectors
    take in training mode.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in _SPLITS:
            raise ConfigError(f"split must be one of {_SPLITS}, got {split!r}")
        self.root = Path(root)
        if _read_marker(self.root) is None:
            raise DataError(
                f"{self.root} is not a detection set (no complete {_MARKER}); "
                f"write one with: conformer prepare fashion-mnist-detection {self.root}"
            )
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        coco = json.loads(self.annotation_file.read_text())
        self.images = coco["images"]
        self.image_dir = self.root / split
        boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in self.images}
        labels: dict[int, list[int]] = {im["id"]: [] for im in self.images}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            boxes[ann["image_id"]].append([x, y, x + w, y + h])
            labels[ann["image_id"]].append(ann["category_id"])
        self._boxes, self._labels = boxes, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[i]
        with Image.open(self.image_dir / info["file_name"]) as im:
            image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float().div_(255)
        target = {
            "boxes": torch.tensor(self._boxes[info["id"]], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(self._labels[info["id"]], dtype=torch.int64),
            "image_id": info["id"],
        }
        return image, target


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """DataLoader collate: detectors take lists of images and targets, not stacked tensors."""
    images, targets = zip(*batch)
    return list(images), list(targets)
