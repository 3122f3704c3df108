"""The one image loader: EXIF orientation, 16-bit greyscale, transparency, the pixel cap and oversized files,
checked against what the formats define (computed here by hand or with numpy), on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from photos import ASTRONAUT, CHELSEA, COFFEE, DATA, ROCKET
from PIL import Image

from vretrver.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageReadError,
    capped_size,
    check_readable,
    load_image,
    max_pixels,
)
from vretrver.tools import ToolConfig

ORIENTATION = 0x0112  # the EXIF tag


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def with_orientation(src: str, orientation: int, dst: Path) -> np.ndarray:
    """Save ``src`` as a JPEG tagged with an EXIF orientation; return the pixels as stored in the file."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    with Image.open(src) as im:
        im.convert("RGB").save(dst, quality=90, exif=exif)
    with Image.open(dst) as im:  # a plain decode ignores the tag: the stored layout
        return pixels(im.convert("RGB"))


def halves(size: tuple[int, int], left=(220, 20, 20), right=(20, 20, 220)) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


# ------------------------------------------------------------------ ordinary images are unchanged


@pytest.mark.parametrize("path", [ASTRONAUT, CHELSEA, COFFEE, ROCKET, str(DATA / "camera.png")])
def test_ordinary_photos_load_as_a_plain_decode(path):
    # No orientation tag, 8 bits, no transparency, under the cap: exactly PIL's own RGB decode.
    with Image.open(path) as im:
        expected = pixels(im.convert("RGB"))
    out = load_image(path)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(pixels(out), expected)


def test_an_rgb_image_in_memory_is_returned_as_it_is():
    im = halves((60, 40))
    assert load_image(im) is im


def test_transparent_parts_are_drawn_on_white():
    # A cut-out: colour hidden under alpha 0 must not show; alpha 255 keeps the colour; alpha 128 blends
    # with white: 128/255 * c + (1 - 128/255) * 255.
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (0, 0, 0)
    rgba[:, 0, 3] = 0
    rgba[:, 1, 3] = 255
    rgba[:, 2, 3] = 128
    out = pixels(load_image(Image.fromarray(rgba)))  # (h, w, 4) uint8: RGBA
    assert (out[:, 0] == 255).all()
    assert (out[:, 1] == 0).all()
    assert (abs(out[:, 2] - round((1 - 128 / 255) * 255)) <= 1).all()


# ------------------------------------------------------------------ 16-bit greyscale


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    # 16 -> 8 bits maps 0..65535 onto 0..255: v / 257, rounded. 1000 -> 3.89 -> 4; 60000 -> 233.46 -> 233.
    values = np.array([[0, 1000, 60000, 65535]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really stored as 16 bits
    out = pixels(load_image(path))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 4, 233, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


# ------------------------------------------------------------------ EXIF orientation


# EXIF 2.3 tag 0x0112: how the stored picture must be turned to be seen upright. Restated with numpy:
# 2 mirrored left-right; 3 turned 180 degrees; 6 turned 90 degrees clockwise; 8 turned 90 counter-clockwise.
UPRIGHT = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = tmp_path / f"phone-{orientation}.jpg"
    stored = with_orientation(ROCKET, orientation, path)  # 640 x 427 as stored
    out = load_image(path)
    np.testing.assert_array_equal(pixels(out), UPRIGHT[orientation](stored))
    if orientation in (6, 8):
        assert out.size == (427, 640)


def test_an_upright_image_is_not_turned_again(tmp_path):
    path = tmp_path / "phone.jpg"
    with_orientation(ROCKET, 6, path)
    once = load_image(path)
    np.testing.assert_array_equal(pixels(load_image(once)), pixels(once))


def test_an_opened_image_with_a_tag_is_turned_too(tmp_path):
    # A PIL image another library opened (verl's dataset, say) still carries its tag.
    path = tmp_path / "phone.jpg"
    stored = with_orientation(ROCKET, 8, path)
    with Image.open(path) as im:
        out = load_image(im)
    np.testing.assert_array_equal(pixels(out), np.rot90(stored, 1))


# ------------------------------------------------------------------ the pixel cap


def test_the_default_cap_is_what_the_model_can_see_of_a_whole_image(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == ToolConfig().max_pixels == 12_845_056


def test_capped_size_by_hand():
    # 1200 x 900 under 100,000 px: scale sqrt(100000 / 1080000) = 0.30429; 1200 * s = 365.1 -> 365,
    # 900 * s = 273.9 -> 273; 365 * 273 = 99,645 px.
    assert capped_size(1200, 900, 100_000) == (365, 273)
    assert capped_size(1200, 900, 1_080_000) == (1200, 900)
    assert capped_size(100_000, 1, 10) == (10, 1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_image_is_downscaled_on_load(tmp_path, fmt):
    path = tmp_path / f"large.{fmt.lower()}"
    halves((1200, 900)).save(path, format=fmt)
    out = load_image(path, limit=100_000)
    assert out.size == (365, 273)
    a = pixels(out)
    # The picture is the same one, smaller: red on the left, blue on the right.
    assert np.abs(a[136, 60] - (220, 20, 20)).max() <= 12
    assert np.abs(a[136, 300] - (20, 20, 220)).max() <= 12


def test_a_large_palette_image_with_transparency_is_downscaled_on_white(tmp_path):
    im = Image.new("P", (1000, 800), 0)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.paste(1, (0, 0, 500, 800))
    im.info["transparency"] = 0
    path = tmp_path / "cutout.png"
    im.save(path, transparency=0)
    a = pixels(load_image(path, limit=50_000))
    # sqrt(50000 / 800000) = 0.25: 250 x 200. Left half the opaque red, right half transparent -> white.
    assert a.shape == (200, 250, 3)
    assert np.abs(a[100, 50] - (200, 30, 30)).max() <= 2
    assert (a[100, 200] == 255).all()


def test_the_cap_comes_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "large.png"
    halves((1200, 900)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    assert load_image(path).size == (365, 273)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        load_image(path)


def test_cap_and_orientation_together(tmp_path):
    path = tmp_path / "phone.jpg"
    with_orientation(ROCKET, 6, path)  # 640 x 427 stored, 427 x 640 upright
    # 640 * 427 = 273,280 px to 50,000: s = 0.42774; 640 * s = 273.8 -> 273, 427 * s = 182.6 -> 182.
    assert load_image(path, limit=50_000).size == (182, 273)


# ------------------------------------------------------------------ files that cannot be used


def test_an_oversized_file_is_an_error_naming_it(monkeypatch):
    # PIL refuses files above twice MAX_IMAGE_PIXELS (a decompression bomb) at open.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match=r"cannot read image .*astronaut\.png: too large") as err:
        load_image(ASTRONAUT)
    assert isinstance(err.value, OSError) and isinstance(err.value, ValueError)
    assert check_readable(ASTRONAUT).startswith("too large")


def test_first_stage_reader_names_an_oversized_file(monkeypatch):
    # The embedders read images with load_rgb: the error must name the file.
    from vretrver.retrieval.base import load_rgb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(OSError, match=r"astronaut\.png"):
        load_rgb(ASTRONAUT)


def test_not_an_image_and_missing(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ImageReadError, match=r"notes\.png"):
        load_image(bad)
    assert check_readable(bad) is not None
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        load_image(tmp_path / "gone.png")
    assert check_readable(ASTRONAUT) is None


def test_every_consumer_sees_a_phone_photo_upright(tmp_path):
    """The model's prompt, the tools, the embedders' reader and the report all get the upright picture."""
    from vretrver.engines.render import conversation_images
    from vretrver.episode import Episode
    from vretrver.report.thumbnails import Thumbnails
    from vretrver.retrieval.base import load_rgb
    from vretrver.samples import Candidate, Query, Sample
    from vretrver.tools import select_images

    path = tmp_path / "phone.jpg"
    stored = with_orientation(ROCKET, 6, path)
    upright = np.rot90(stored, -1)  # 427 wide, 640 high
    sample = Sample("q", Query("a rocket", [str(path)]), [Candidate("c1", image=str(path))])
    prompt = conversation_images(Episode(sample).conversation)
    assert len(prompt) == 2
    for im in prompt:
        np.testing.assert_array_equal(pixels(im), upright)
    np.testing.assert_array_equal(pixels(load_rgb(str(path))), upright)
    assert select_images({"target_images": [0]}, sample.image_paths(), ToolConfig()).images[0].size == (
        420,
        644,
    )
    imgs = Thumbnails(tmp_path / "report" / "img", tmp_path, [str(path)])
    with Image.open(tmp_path / "report" / imgs.thumb(path, 160)) as thumb:
        assert thumb.size == (107, 160)  # 427 x 640 into 160 x 160: 160 * 427 / 640 = 106.75 -> 107
