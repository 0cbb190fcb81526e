"""prepare_fashion_mnist on small synthetic IDX files, and once on the Debian package's files."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conformer_vision.data.datasets import ImageFolderDataset
from conformer_vision.data.fashion_mnist import DEFAULT_SOURCE_DIR, FASHION_MNIST_CLASSES, prepare_fashion_mnist
from conformer_vision.errors import ConfigError, DataError


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """IDX files with 3 train and 2 test images per class; image i is filled with value i."""
    folder = tmp_path / "source"
    folder.mkdir()
    for prefix, per_class in (("train", 3), ("t10k", 2)):
        labels = np.tile(np.arange(10), per_class)
        images = np.repeat(np.arange(len(labels))[:, None, None], 28, axis=1).repeat(28, axis=2)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x0803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x0801)
    return folder


def test_writes_rgb_imagefolder_tree(tmp_path, source):
    info = prepare_fashion_mnist(tmp_path / "fm", image_size=16, source_dir=source)
    assert (info["num_train"], info["num_val"], info["created"]) == (30, 20, True)
    assert info["label_names"] == list(FASHION_MNIST_CLASSES) and info["classes"] == sorted(FASHION_MNIST_CLASSES)
    path = Path(info["train_dir"]) / FASHION_MNIST_CLASSES[3] / "00013.png"  # train image 13 has label 3
    image = Image.open(path)
    assert (image.mode, image.size) == ("RGB", (16, 16)) and image.getpixel((8, 8)) == (13, 13, 13)
    ds = ImageFolderDataset(info["val_dir"])
    assert len(ds) == 20 and ds.classes == info["classes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm", "source"]  # no temp folders left


def test_second_call_is_skipped_and_new_parameters_rebuild(tmp_path, source):
    out = tmp_path / "fm"
    prepare_fashion_mnist(out, image_size=8, source_dir=source)
    assert prepare_fashion_mnist(out, image_size=8, source_dir=source)["created"] is False
    info = prepare_fashion_mnist(out, image_size=8, source_dir=source, limit_per_class=1, val_from="train")
    # val = the last sixth of train (indices 25..29, labels 5..9), train = the first of each class
    assert info["created"] is True and (info["num_train"], info["num_val"]) == (10, 5)
    assert json.loads((out / "prepared.json").read_text())["params"]["limit_per_class"] == 1
    assert len(list((out / "train").rglob("*.png"))) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm", "source"]  # no temp folders left


def test_refuses_a_foreign_non_empty_folder(tmp_path, source):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not a Fashion-MNIST preparation"):
        prepare_fashion_mnist(tmp_path / "mine", source_dir=source)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DataError) as info:
        prepare_fashion_mnist(tmp_path / "fm", source_dir=tmp_path / "empty")
    message = str(info.value)
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in message
    assert str(tmp_path / "empty") in message and not (tmp_path / "fm").exists()


def test_corrupt_idx_file_is_a_data_error(tmp_path, source):
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01junk"))
    with pytest.raises(DataError, match="not a valid IDX"):
        prepare_fashion_mnist(tmp_path / "fm", source_dir=source)


@pytest.mark.parametrize("bad", [dict(image_size=0), dict(val_from="holdout"), dict(limit_per_class=0)])
def test_bad_parameters(tmp_path, source, bad):
    with pytest.raises(ConfigError):
        prepare_fashion_mnist(tmp_path / "fm", source_dir=source, **bad)


@pytest.mark.skipif(
    not (DEFAULT_SOURCE_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist not installed (no {DEFAULT_SOURCE_DIR}); "
    "apt-get install -y dataset-fashion-mnist",
)
def test_real_package_files(tmp_path):
    info = prepare_fashion_mnist(tmp_path / "fm", image_size=32, limit_per_class=2)
    assert (info["num_train"], info["num_val"]) == (20, 20)
    # The first training image of Fashion-MNIST is labelled 9 (ankle boot).
    image = Image.open(Path(info["train_dir"]) / "ankle_boot" / "00000.png")
    assert (image.mode, image.size) == ("RGB", (32, 32))
    for split in ("train_dir", "val_dir"):
        counts = {d.name: len(list(d.iterdir())) for d in Path(info[split]).iterdir()}
        assert counts == {name: 2 for name in FASHION_MNIST_CLASSES}
