"""The report's images: thumbnails written once into ``report/img/``, and what a page shows for each."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageDraw

from vretrver.images import load_image

THUMB = 160
TOOL_THUMB = 280
LEGEND_THUMB = 64
LARGE = 1024  # the copy a tool image links to


@dataclass
class Picture:
    """One image on a page: a thumbnail (``rel``), or a note saying why there is none."""

    src: str  # the source file, as the result folder names it
    alt: str
    cls: str = ""
    rel: str | None = None  # img/<name>.jpg, relative to the report folder
    note: str = ""  # why it is not shown, when rel is None
    large: str | None = None  # the larger copy a tool image links to


class Thumbnails:
    """Thumbnails written once into report/img/, named by a hash of their source and settings.

    Only two kinds of file are read: files inside the result folder (the tool images) and the image paths
    the result folder's samples list (the benchmark's own images). A trajectory naming any other file
    (an absolute path, ``..``) gets no thumbnail, so a result file cannot make the report copy arbitrary
    files. A file that cannot be shown is skipped, with its reason kept for the page and the index.
    """

    def __init__(self, folder: Path, root: Path, known: Iterable[str]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.known = set(known)
        self.done: dict[tuple[str, int, tuple | None], str | None] = {}
        self.problems: dict[str, str] = {}  # source -> why it is not shown

    def _allowed(self, src: str | Path) -> bool:
        return str(src) in self.known or Path(src).resolve().is_relative_to(self.root)

    def thumb(self, src: str | Path, size: int = THUMB, box: tuple | None = None) -> str | None:
        """``img/<name>.jpg`` relative to the report folder, or None if the source cannot be shown."""
        key = (str(src), size, box)
        if key not in self.done:
            name = hashlib.sha1(repr(key).encode()).hexdigest()[:16] + ".jpg"
            why = self._write(src, size, box, self.folder / name)
            if why is not None:
                self.problems[str(src)] = why
            self.done[key] = None if why else f"img/{name}"
        return self.done[key]

    def _write(self, src: str | Path, size: int, box: tuple | None, dst: Path) -> str | None:
        """Write the thumbnail; or say why not."""
        if not self._allowed(src):
            return "outside the result folder and not a benchmark image"
        try:
            im = load_image(src)
        except FileNotFoundError:
            return "missing"
        except Exception as e:  # broken, not an image, above the size limit: it costs its picture only
            return str(getattr(e, "reason", None) or f"{type(e).__name__}: {e}")
        if box:
            # Drawn at the source's resolution, so the line width is relative to the picture.
            width = max(2, round(max(im.size) / 80))
            ImageDraw.Draw(im).rectangle(box, outline=(230, 30, 30), width=width)
        im.thumbnail((size, size))
        im.save(dst, quality=88)
        return None

    def picture(
        self, src: str | Path, alt: str, size: int = THUMB, cls: str = "", box: tuple | None = None
    ) -> Picture:
        """The thumbnail of ``src`` as a page shows it, or the note naming the file and why it is not shown."""
        rel = self.thumb(src, size, box)
        if rel is not None:
            return Picture(str(src), alt, cls, rel)
        why = self.problems.get(str(src), "missing")
        note = "image missing" if why == "missing" else f"image not shown: {Path(src).name}: {why}"
        return Picture(str(src), alt, cls, note=note)

    def figure(self, src: str | Path, caption: str, cls: str, box: tuple | None = None) -> Picture:
        """A tool image: its thumbnail, linked to a larger copy (what the model saw, in detail)."""
        pic = self.picture(src, caption, TOOL_THUMB, cls, box)
        if pic.rel is not None:
            pic.large = self.thumb(src, LARGE, box)
        return pic
