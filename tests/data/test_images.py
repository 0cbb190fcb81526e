"""load_rgb: every supported mode decodes to correct RGB; every bad file is an ImageDecodeError."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conformer_vision.data.images import IMAGE_EXTENSIONS, check_image, is_image_file, list_images, load_rgb
from conformer_vision.errors import ConformerError, DataError, ImageDecodeError


def pixels(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


# ---- colour modes ---------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("a.jpg", "JPEG"),
        ("a.png", "PNG"),
        ("a.bmp", "BMP"),
        ("a.webp", "WEBP"),
        ("a.ppm", "PPM"),
        ("a.tif", "TIFF"),
        ("a.gif", "GIF"),
    ],
)
def test_common_formats_decode_to_rgb(write_image, name, fmt):
    image = load_rgb(write_image(name, format=fmt))
    assert image.mode == "RGB" and image.size == (16, 12)


def test_greyscale_is_replicated_to_three_channels(write_image):
    grey = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) * 5)
    rgb = pixels(write_image("g.png", grey))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == np.asarray(grey)).all()


def test_one_bit_is_black_and_white(write_image):
    image = Image.new("1", (4, 4), 0)
    image.putpixel((1, 1), 1)
    rgb = pixels(write_image("b.png", image))
    assert tuple(rgb[1, 1]) == (255, 255, 255) and tuple(rgb[0, 0]) == (0, 0, 0)


def test_rgba_is_composited_on_white(write_image):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(200, 10, 10, 255), (0, 0, 0, 0), (0, 0, 0, 128)])
    rgb = pixels(write_image("a.png", image))
    assert tuple(rgb[0, 0]) == (200, 10, 10)  # opaque: unchanged
    assert tuple(rgb[0, 1]) == (255, 255, 255)  # transparent: background
    assert np.all(np.abs(rgb[0, 2] - 127) <= 1)  # half-transparent black over white: mid grey


def test_la_is_composited_on_white(write_image):
    image = Image.new("LA", (2, 1))
    image.putdata([(50, 255), (50, 0)])
    rgb = pixels(write_image("la.png", image))
    assert tuple(rgb[0, 0]) == (50, 50, 50) and tuple(rgb[0, 1]) == (255, 255, 255)


def test_palette_with_transparent_index(write_image):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    path = write_image("p.png", image, transparency=1)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    rgb = pixels(path)
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[0, 1]) == (255, 255, 255)


def test_cmyk_jpeg_adobe_colours(write_image):
    path = write_image("c.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    assert "adobe" in Image.open(path).info  # Pillow writes Adobe (inverted) CMYK
    assert np.abs(pixels(path)[8, 8] - (255, 0, 0)).max() <= 8  # pure red


def test_cmyk_jpeg_without_adobe_marker_is_not_inverted(write_image, strip_adobe_marker):
    # Pillow stores (255 - v) for Adobe; feeding it the inverted image and dropping the marker
    # leaves plain CMYK red in the file, as a non-Adobe encoder would write it.
    inverted = Image.new("CMYK", (16, 16), (255, 0, 0, 255))
    path = write_image("n.jpg", inverted, quality=95)
    path.write_bytes(strip_adobe_marker(path.read_bytes()))
    assert "adobe" not in Image.open(path).info
    assert np.abs(pixels(path)[8, 8] - (255, 0, 0)).max() <= 8


def test_16_bit_png_is_scaled_not_clipped(write_image):
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    path = write_image("d.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    assert pixels(path)[0, :, 0].tolist() == [0, 1, 4, 128, 255]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_and_32_bit_integer_tiff(write_image, mode):
    values = np.array([[0, 257, 1000, 32896, 65535]])
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        image = Image.frombytes(mode, (5, 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    path = write_image(f"{mode.replace(';', '')}.tif", image)
    assert Image.open(path).mode == mode
    assert pixels(path)[0, :, 0].tolist() == [0, 1, 4, 128, 255]


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_tiff(write_image, scale):
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32) * scale
    path = write_image(f"f{int(scale)}.tif", Image.fromarray(values))
    assert Image.open(path).mode == "F"
    assert pixels(path)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(write_image):
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = write_image("o.jpg", image, exif=exif, quality=95)
    rgb = pixels(path)
    assert rgb.shape == (20, 10, 3)
    assert rgb[2, 5, 0] > 200 and rgb[17, 5, 2] > 200  # the red half is now on top


# ---- bad files ------------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "kind,name,reason",
    [
        ("truncated", "t.jpg", "truncated"),
        ("truncated", "t.png", "truncated"),
        ("empty", "e.jpg", "empty"),
        ("text", "x.jpg", "not a recognised image"),
        ("dir", "d.jpg", "directory"),
    ],
)
def test_bad_files_raise_decode_error(tmp_path, make_bad, kind, name, reason):
    path = make_bad(tmp_path / name, kind)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_rgb(path)
    assert info.value.path == path and reason in info.value.reason
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="does not exist"):
        load_rgb(tmp_path / "nope.jpg")


def test_decompression_bomb_error_at_default_limit(tmp_path, png_with_size):
    limit = Image.MAX_IMAGE_PIXELS
    path = png_with_size(tmp_path / "bomb.png", 20_000, 20_000)  # 4e8 px > 2 x the default limit
    assert path.stat().st_size < 100
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_rgb(path)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        check_image(path)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_decompression_bomb_warning_is_an_error_only_inside_the_call(write_image, monkeypatch):
    path = write_image("w.png", Image.new("L", (40, 40)))  # 1,600 px: between limit and 2 x limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_rgb(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(path).close()  # outside load_rgb the warning is still only a warning
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_check_image_header_only_vs_full(tmp_path, make_bad):
    path = make_bad(tmp_path / "t.jpg", "truncated")
    check_image(path)  # the header is fine
    with pytest.raises(ImageDecodeError, match="truncated"):
        check_image(path, full=True)
    with pytest.raises(ImageDecodeError, match="empty"):
        check_image(make_bad(tmp_path / "e.png", "empty"))


def test_decode_error_is_a_data_error_and_pickles(tmp_path):
    err = ImageDecodeError(tmp_path / "a.jpg", "file is empty (0 bytes)")
    assert isinstance(err, DataError) and isinstance(err, ConformerError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))


# ---- names and listing ----------------------------------------------------------------------- #


def test_image_extensions_are_case_insensitive():
    assert {".jpg", ".jpeg", ".png", ".webp", ".pbm"} <= IMAGE_EXTENSIONS
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFf") and not is_image_file("notes.txt")


def test_list_images_sorted_skips_hidden_and_non_files(tmp_path, write_image, make_bad):
    for name in ["b.png", "a.JPG", ".hidden.png", "sub/c.png", ".git/d.png", "sub/.e.png"]:
        write_image(name, format="PNG")
    (tmp_path / "notes.txt").write_text("x")
    make_bad(tmp_path / "folder.jpg", "dir")
    write_image("folder.jpg/inner.png")
    assert list_images(tmp_path) == [tmp_path / "a.JPG", tmp_path / "b.png"]
    assert list_images(tmp_path, recursive=True) == sorted(
        [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "folder.jpg/inner.png", tmp_path / "sub/c.png"]
    )
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
