"""Builders of real image files (Pillow's own encoders) and ImageFolder trees for the data tests."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WriteImage = Callable[..., Path]


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image of random pixels, (width, height) = size."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 greyscale PNG from Pillow whose IHDR then claims width x height (CRC fixed).

    Pillow refuses such a file at `Image.open` from its header alone, so a huge 'bomb' costs 70 bytes.
    """
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _strip_adobe_marker(jpeg: bytes) -> bytes:
    """Remove the APP14 'Adobe' segment from JPEG bytes."""
    pos = 2  # after SOI
    while pos < len(jpeg) and jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        length = struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        if jpeg[pos + 1] == 0xEE and jpeg[pos + 4 : pos + 9] == b"Adobe":
            return jpeg[:pos] + jpeg[pos + 2 + length :]
        pos += 2 + length
    raise AssertionError("no Adobe APP14 segment found")


@pytest.fixture
def write_image(tmp_path: Path) -> WriteImage:
    """write_image(name, image=None, **save_kwargs) -> path under tmp_path (noise image by default)."""

    def write(name: str, image: Image.Image | None = None, **save_kwargs: object) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (image if image is not None else noise((16, 12))).save(path, **save_kwargs)
        return path

    return write


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree(split, {class: n_images}) -> tmp_path/split holding n small PNGs per class.

    Image k of class c is a flat colour encoding (class index, k), so tests can tell which file an
    item came from: pixel (0, 0) == (class_index * 20, k, 0).
    """

    def make(split: str, counts: dict[str, int]) -> Path:
        root = tmp_path / split
        for ci, (name, n) in enumerate(sorted(counts.items())):
            (root / name).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.new("RGB", (8, 8), (ci * 20, k, 0)).save(root / name / f"{k:03d}.png")
        return root

    return make


def _make_bad(path: Path, kind: str) -> Path:
    """Put a bad entry at `path`: 'truncated' (half a noise JPEG/PNG), 'empty' (0 bytes),
    'text' (a text file) or 'dir' (a directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        path.unlink()
    if kind == "truncated":
        noise((64, 64)).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "dir":
        path.mkdir()
    else:
        raise ValueError(kind)
    return path


@pytest.fixture
def make_bad() -> Callable[[Path, str], Path]:
    """make_bad(path, kind) -> path; see `_make_bad`."""
    return _make_bad


@pytest.fixture
def png_with_size() -> Callable[[Path, int, int], Path]:
    """png_with_size(path, width, height) -> a tiny PNG whose header claims that size."""
    return _png_with_size


@pytest.fixture
def strip_adobe_marker() -> Callable[[bytes], bytes]:
    """strip_adobe_marker(jpeg_bytes) -> the bytes without the APP14 Adobe segment."""
    return _strip_adobe_marker
