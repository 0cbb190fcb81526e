"""The class-folder index (`data.index`): the same samples and labels as the data layer's previous
`Path`-based scan and as torchvision's ImageFolder, the same rules for odd entries, flat arrays
instead of per-sample objects. A tree of 3,000 empty files; the speed is printed, not asserted."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conformer_vision.data.datasets import ImageFolderDataset
from conformer_vision.data.images import IMAGE_EXTENSIONS
from conformer_vision.data.index import FolderIndex, scan_split
from conformer_vision.errors import DataError

CLASSES, PER_CLASS = 20, 150
SUFFIXES = (".jpg", ".JPEG", ".png", ".webp", ".Tif")


def path_scan(root: Path, classes: list[str] | None = None) -> list[tuple[str, int]]:
    """The data layer's scan before the index (one `Path` and one `stat` per file), as the oracle."""
    found = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    position = {name: i for i, name in enumerate(classes or found)}
    samples = []
    for name in found:
        for entry in sorted((root / name).iterdir()):
            if not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                samples.append((str(entry), position[name]))
    return samples


def listed(index: FolderIndex) -> list[tuple[str, int]]:
    return [(index.path(i), int(index.labels[i])) for i in range(len(index))]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/: 20 class folders x 150 empty image files (mixed extensions and cases, unsorted
    creation order) and a text file per class; val/: 3 of the classes."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / "train" / f"n{c:04d}_class"
        folder.mkdir(parents=True)
        for k in rng.permutation(PER_CLASS):
            (folder / f"img_{k:05d}{SUFFIXES[k % len(SUFFIXES)]}").touch()
        (folder / "notes.txt").write_text("not an image")
    for c in (2, 7, 11):
        folder = root / "val" / f"n{c:04d}_class"
        folder.mkdir(parents=True)
        for k in range(4):
            (folder / f"v{k}.jpg").touch()
    return root


def test_index_equals_the_path_scan_and_torchvision(tree: Path) -> None:
    from torchvision.datasets import DatasetFolder  # ImageFolder's scan, with our extension list

    timings = {}
    start = time.perf_counter()
    index = scan_split(tree / "train")
    timings["index"] = time.perf_counter() - start
    start = time.perf_counter()
    oracle = path_scan(tree / "train")
    timings["Path scan"] = time.perf_counter() - start
    start = time.perf_counter()
    reference = DatasetFolder(str(tree / "train"), loader=len, extensions=tuple(IMAGE_EXTENSIONS))
    timings["torchvision"] = time.perf_counter() - start
    assert len(index) == CLASSES * PER_CLASS
    assert listed(index) == oracle == [(path, label) for path, label in reference.samples]
    assert index.classes == reference.classes
    print(f"\nindexing {len(index)} empty files: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in timings.items()))
    val = scan_split(tree / "val", index.classes)
    assert listed(val) == path_scan(tree / "val", index.classes) and sorted(set(val.labels.tolist())) == [2, 7, 11]


def test_odd_entries_follow_the_folder_rules(tree: Path, tmp_path: Path) -> None:
    """Hidden files and folders are neither classes nor images, an image-named folder is rejected
    (and counted against the bad-file budget), a sub-folder is ignored, names without an image
    extension are not images: as before the index."""
    root = tmp_path / "train"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for k in range(3):
            (root / name / f"{k}.jpg").touch()
    (root / ".git").mkdir()
    (root / ".git" / "x.jpg").touch()
    (root / "cat" / ".hidden.jpg").touch()
    (root / "cat" / "._mac.jpg").touch()
    (root / "cat" / "folder.jpg").mkdir()
    (root / "cat" / "sub").mkdir()
    (root / "cat" / "sub" / "deep.jpg").touch()
    (root / "dog" / "jpg").touch()
    (root / "dog" / "noext.").touch()
    (root / "dog" / "link.png").symlink_to(root / "dog" / "0.jpg")
    (root / "dog" / "dangling.png").symlink_to(root / "dog" / "missing.png")
    index = scan_split(root)
    assert listed(index) == path_scan(root)
    assert [Path(p).name for p, _ in listed(index)] == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "link.png",
    ]
    assert index.classes == ["cat", "dog"]
    assert index.rejected == sorted([str(root / "cat" / "folder.jpg"), str(root / "dog" / "dangling.png")])
    with pytest.raises(DataError, match="too many unreadable"):
        ImageFolderDataset(root, max_bad_files=1)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty contains no images"):
        scan_split(root)
    with pytest.raises(DataError, match="not in the class list"):
        scan_split(tree / "train", ["n0000_class"])


def test_subsets_are_the_fixed_ones(tree: Path) -> None:
    """`num_samples` keeps the subset the data layer always drew (a permutation seeded 0), in order."""
    full = path_scan(tree / "train")
    chosen = sorted(torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:500].tolist())
    dataset = ImageFolderDataset(tree / "train", num_samples=500)
    assert [(dataset.path(i), dataset.target(i)) for i in range(len(dataset))] == [full[i] for i in chosen]
    assert dataset.samples == [(Path(p), t) for p, t in (full[i] for i in chosen)]


def test_samples_are_a_few_flat_arrays(tree: Path) -> None:
    """No Python object per sample: the dataset and its index hold numpy arrays (and the shared
    bad-file mask), ~30 bytes per image, and pickle (what a spawned worker receives) just as small."""
    dataset = ImageFolderDataset(tree / "train")
    n = len(dataset)
    held = {**vars(dataset), **{f"index.{k}": v for k, v in vars(dataset.index).items()}}
    for name, value in held.items():
        if isinstance(value, (list, tuple, dict, set, str)):
            assert len(value) < 100, f"{name} holds {len(value)} Python objects"
        else:
            assert not hasattr(value, "__len__") or isinstance(value, (np.ndarray, torch.Tensor, FolderIndex)), name
    arrays = [v for v in vars(dataset.index).values() if isinstance(v, np.ndarray)]
    assert len(arrays) == 4 and all(a.dtype != object for a in arrays)
    assert dataset.index.nbytes < 40 * n and len(pickle.dumps(dataset.index)) < 45 * n
    assert dataset.labels.dtype == np.int32 and dataset.targets[:2] == [0, 0]
    assert os.path.basename(dataset.path(0)) == "img_00000.jpg"
