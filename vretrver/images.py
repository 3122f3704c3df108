"""Opening an image, the same way for the model's prompt, the tools, the embedders and the viewer.

Every consumer gets 8-bit RGB pixels prepared by the same steps, so that what the model is shown, what a
tool crops and what the report displays agree:

* the EXIF orientation is applied (a phone photo stored sideways is shown upright);
* 16-bit greyscale is scaled to 8 bits (v / 257, rounded) instead of being clipped at 255;
* transparent parts are drawn on white (a plain conversion shows whatever colour hides under them);
* an image above :func:`max_pixels` (default 12,845,056, Qwen2.5-VL's ``max_pixels``: the model never sees
  more of a whole image) is downscaled once, on load, to fit it; a JPEG is then decoded at a reduced scale
  and other formats are reduced band by band, so that a huge file costs little memory beyond its decode;
* a file above PIL's decompression-bomb limit is refused with an :class:`ImageReadError` naming it.
"""

from __future__ import annotations

import math
import os
from typing import IO, Any

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 12_845_056
MAX_PIXELS_ENV = "VRETRVER_MAX_IMAGE_PIXELS"
# Rows of about this many pixels are converted at a time when a large image is reduced.
_BAND_PIXELS = 1 << 22
# EXIF orientation tag -> the transpose that shows the picture upright (EXIF 2.3, tag 0x0112).
_ORIENTATION = 0x0112
_UPRIGHT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
# Where PIL finds an orientation: the EXIF block, or XMP metadata.
_ORIENTATION_KEYS = ("exif", "xmp", "XML:com.adobe.xmp")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")

Source = str | os.PathLike | IO[bytes] | Image.Image


class ImageReadError(OSError, ValueError):
    """A file that is not a usable image: not an image, truncated, or above the size limit.

    An ``OSError`` like any unreadable file, and a ``ValueError`` as bad input: the command line reports
    it in one line naming the file.
    """

    def __init__(self, source: Any, reason: str):
        self.source = _describe(source)
        self.reason = reason
        super().__init__(f"cannot read image {self.source}: {reason}")


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"


def max_pixels() -> int:
    """The pixel cap: ``$VRETRVER_MAX_IMAGE_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${MAX_PIXELS_ENV}: expected a positive whole number of pixels, got {raw!r}")
    return value


def capped_size(width: int, height: int, limit: int) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is loaded at: aspect kept, area at most ``limit``."""
    if width * height <= limit:
        return width, height
    scale = math.sqrt(limit / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while w * h > limit:  # floating point may round a side up by one
        w, h = (w - 1, h) if w >= h else (w, h - 1)
    return w, h


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: show the pixels as stored
        return 1
    return value if value in _UPRIGHT else 1


def _eight_bit_grey(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale to 8 bits, 0 -> 0 and 65535 -> 255."""
    a = np.asarray(im)
    a = np.clip(a.astype(np.int64), 0, 65535)
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8: "L"


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; transparent parts on white, 16-bit grey scaled (the image itself when already RGB)."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT:
        return _eight_bit_grey(im).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _reduced_rgb(im: Image.Image, factor: int) -> Image.Image:
    """``to_rgb(im).reduce(factor)``, converted a band of rows at a time (no full-size RGB copy)."""
    w, h = im.size
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    rows = factor * max(1, _BAND_PIXELS // (w * factor))
    for y in range(0, h, rows):
        band = to_rgb(im.crop((0, y, w, min(h, y + rows))))
        out.paste(band.reduce(factor), (0, y // factor))
    return out


def _fit(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB at exactly ``size`` (the pixel cap), from a larger loaded image."""
    factor = min(im.width // size[0], im.height // size[1])
    small = _reduced_rgb(im, factor) if factor >= 2 else to_rgb(im)
    return small if small.size == size else small.resize(size, Image.Resampling.BICUBIC)


def _prepare(im: Image.Image, limit: int, orientation: int, size: tuple[int, int]) -> Image.Image:
    """The loaded image ``im`` (stored orientation, original ``size`` before any draft) as RGB, capped, upright."""
    target = capped_size(*size, limit)
    out = to_rgb(im) if target == size else _fit(im, target)
    steps = _UPRIGHT.get(orientation, ())
    for step in steps:
        out = out.transpose(step)
    if steps:
        # The copy is upright now: drop what still says to turn it, so loading it again keeps it so.
        out.info = {k: v for k, v in out.info.items() if k not in _ORIENTATION_KEYS}
    return out


def load_image(source: Source, limit: int | None = None) -> Image.Image:
    """An RGB image as every part of the pipeline sees it (see the module notes).

    ``source`` is a path, a binary file object or a PIL image; ``limit`` overrides :func:`max_pixels`.
    Raises :class:`ImageReadError` (an ``OSError``; ``FileNotFoundError`` for a missing file) naming the file.
    """
    limit = max_pixels() if limit is None else limit
    if isinstance(source, Image.Image):
        return _prepare(source, limit, _orientation(source), source.size)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"image not found: {os.fspath(source)}")
    try:
        with Image.open(source) as im:
            size = im.size
            target = capped_size(*size, limit)
            if target != size:
                im.draft(None, target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still at least the target
            im.load()
            out = _prepare(im, limit, _orientation(im), size)
            # An RGB image comes back as itself: copy it out of the file's image object.
            return out.copy() if out is im else out
    except Image.DecompressionBombError as e:
        raise ImageReadError(source, f"too large ({e})") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # not an image, truncated, a decoder's own error: a problem of this file only
        raise ImageReadError(source, f"{type(e).__name__}: {e}") from None


def check_readable(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` cannot be loaded, from its header only (None when it looks fine).

    Catches files that are not images and files above the decompression-bomb limit; a file truncated
    after its header is only found when it is decoded.
    """
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header is read on open; this keeps the intent visible
    except Image.DecompressionBombError as e:
        return f"too large ({e})"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None
