"""Decode any image file to an 8-bit RGB PIL image: the one place that does it.

Training, evaluation, prediction and export checks all call `load_rgb`, so a file is turned into
pixels the same way everywhere. The rules:

* The file is fully decoded inside the call (`Image.load()`), so a truncated file fails here, inside
  the guard, and not later in a transform.
* Every failure is an `ImageDecodeError(path, reason)`: missing path, directory, empty file, unknown
  format, truncated or corrupt data, and decompression bombs. Pillow's pixel limit
  (`Image.MAX_IMAGE_PIXELS`) is never changed; its `DecompressionBombWarning` is turned into an error
  for the duration of the call only.
* EXIF orientation is applied (`ImageOps.exif_transpose`) before anything else.
* Transparency (RGBA, LA, palette or greyscale with a transparent colour) is composited onto a
  WHITE background: photos with cut-outs and web graphics usually expect a light page behind them,
  and white is what a browser shows. Premultiplied modes are unpremultiplied first.
* 16-bit and 32-bit integer greyscale (`I;16`, `I;16B`, `I;16L`, `I`) is scaled to 8 bit by dividing by
  257 (0..65535 -> 0..255, rounded), never clipped. Float (`F`) images are taken as 0..1 when no
  value exceeds 1, else as 0..255; values outside the range are clipped, NaN becomes 0.
* CMYK: Pillow decodes JPEG CMYK with Adobe's inverted polarity. A CMYK JPEG without an Adobe APP14
  marker was not written by Adobe software and stores plain CMYK, so it is inverted back (the rule
  Firefox follows). Embedded ICC profiles are not applied here or anywhere else: the conversion is
  Pillow's naive CMYK -> RGB, the same in every path.

`warnings.catch_warnings` changes process-wide state, so `load_rgb` must not be called from several
threads at once (DataLoader workers are processes, which is fine).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from conformer_vision.errors import DataError, ImageDecodeError

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "is_hidden", "list_images", "load_rgb", "check_image", "decode_rgb"]

_LOG = logging.getLogger("conformer_vision.data")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
"""Lower-case suffixes (with the dot) treated as images; matching is case-insensitive."""

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_CONVERTIBLE_MODES = frozenset({"RGB", "RGBX", "L", "1", "P", "YCbCr", "LAB", "HSV"})


def is_image_file(path: str | Path) -> bool:
    """True when the name has an image extension; looks at the name only, not the disk."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_hidden(path: str | Path) -> bool:
    """True for names starting with '.' (`.git`, `.ipynb_checkpoints`, macOS `._x.jpg`)."""
    return Path(path).name.startswith(".")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Regular files with an image extension under `folder`, sorted, hidden files and dirs skipped.

    Without `recursive`, an entry with an image name that is not a file (a directory called `x.jpg`)
    is logged and skipped; with it, such a directory is simply descended into.

    Raises:
        DataError: `folder` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist or is not a directory")
    images: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_hidden(entry):
            continue
        if entry.is_dir() and recursive:
            images += list_images(entry, recursive=True)
        elif is_image_file(entry) and entry.is_file():
            images.append(entry)
        elif is_image_file(entry):
            _LOG.warning("skipping %s: has an image name but is not a file", entry)
    return sorted(images)


def _check_path(path: Path) -> None:
    """Raise for what can be told from the file system alone."""
    if not path.exists():
        raise ImageDecodeError(path, "file does not exist")
    if path.is_dir():
        raise ImageDecodeError(path, "is a directory, not an image file")
    if not path.is_file():
        raise ImageDecodeError(path, "is not a regular file")
    if path.stat().st_size == 0:
        raise ImageDecodeError(path, "file is empty (0 bytes)")


def _open_guarded(path: Path, decode: bool) -> Image.Image:
    """Open (and with `decode`, fully decode) `path`, mapping every failure to ImageDecodeError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on bad data
            raise _decode_error(path, exc) from None
        if decode:
            try:
                image.load()
            except Exception as exc:  # noqa: BLE001
                image.close()
                raise _decode_error(path, exc) from None
    return image


def _decode_error(path: Path, exc: Exception) -> ImageDecodeError:
    """The ImageDecodeError describing why Pillow failed on `path`."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageDecodeError(path, f"decompression bomb refused ({exc})")
    if isinstance(exc, UnidentifiedImageError):
        return ImageDecodeError(path, "not a recognised image format")
    if isinstance(exc, PermissionError):
        return ImageDecodeError(path, "permission denied")
    return ImageDecodeError(path, f"corrupt image data ({type(exc).__name__}: {exc})")


def check_image(path: str | Path, full: bool = False) -> None:
    """Raise ImageDecodeError when `path` is not a usable image.

    The cheap check (default) reads the header only: it catches missing, empty, non-image files and
    decompression bombs. `full=True` decodes every pixel like `load_rgb` and also catches truncation.
    """
    if full:
        load_rgb(path)
        return
    path = Path(path)
    _check_path(path)
    _open_guarded(path, decode=False).close()


def load_rgb(path: str | Path) -> Image.Image:
    """Decode `path` completely to a new mode 'RGB' image (rules in the module docstring).

    Raises:
        ImageDecodeError: for any file that cannot be decoded; `.reason` says why.
    """
    path = Path(path)
    _check_path(path)
    image = _open_guarded(path, decode=True)
    try:
        _apply_exif_orientation(image)
        return _to_rgb(image, path)
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion of an exotic or corrupt mode
        raise ImageDecodeError(path, f"cannot convert mode {image.mode} to RGB ({exc})") from None
    finally:
        image.close()  # _to_rgb always returns a new image; this releases the file and the pixels


def decode_rgb(data: bytes, name: str | Path) -> Image.Image:
    """`load_rgb` for an image file held in memory (a member of a WebDataset shard): the same rules
    and errors; `name` says where the bytes came from, in the ImageDecodeError."""
    if not data:
        raise ImageDecodeError(name, "file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = None
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on bad data
            if image is not None:
                image.close()
            raise _decode_error(Path(name), exc) from None
    try:
        _apply_exif_orientation(image)
        return _to_rgb(image, Path(name))
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion of an exotic or corrupt mode
        raise ImageDecodeError(name, f"cannot convert mode {image.mode} to RGB ({exc})") from None
    finally:
        image.close()


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip in place per the EXIF Orientation tag; a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # noqa: BLE001 - the pixels are fine, only the metadata is not
        _LOG.debug("ignoring unreadable EXIF orientation in %s: %s", image.filename, exc)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert a decoded image of any Pillow mode to a new 8-bit RGB image."""
    mode = image.mode
    if mode in _INT_GREY_MODES:
        return _grey_to_rgb(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "F":
        return _float_grey_to_rgb(np.asarray(image, dtype=np.float64))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image.convert("RGBA"))
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode not in _CONVERTIBLE_MODES:
        raise ImageDecodeError(path, f"unsupported image mode {mode}")
    return image.convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Alpha-composite an RGBA image onto an opaque white background."""
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    """(H, W) array already on the 0..255 scale -> RGB, rounding and clipping to uint8."""
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _float_grey_to_rgb(values: np.ndarray) -> Image.Image:
    """Float greyscale: 0..1 when nothing exceeds 1, else 0..255 (see module docstring)."""
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return _grey_to_rgb(values)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Pillow's CMYK -> RGB, undoing Pillow's Adobe-polarity assumption for non-Adobe JPEGs."""
    if image.format == "JPEG" and "adobe" not in image.info:
        image = image.point(lambda v: 255 - v)
    return image.convert("RGB")
