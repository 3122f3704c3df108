"""The embedded mini-benchmark: Tux Paint's stamp drawings and their human-written captions.

Debian's ``tuxpaint-stamps-default`` (GPL-2) installs PNG / SVG stamps under
``/usr/share/tuxpaint/stamps/<category>/.../<name>.png`` with ``<name>.txt`` beside each, whose first line
is an English caption. They are read where they are installed, never copied. Used: every PNG outside
``symbols/`` that has a caption (SVGs are left out: PIL cannot read them).

Two tasks in M-BEIR's shape: ``tuxpaint_t2i`` (one query per distinct caption; its positives are all
drawings with that caption; pool = all drawings) and ``tuxpaint_i2t`` (one query per drawing; pool = the
distinct captions). ``split="test"`` takes the ``test_size`` queries whose SHA-1 of the query key
(caption / relative path) is smallest, a stable sample for demos; ``split="train"`` takes the others
(training data that never meets the test queries); ``split="full"`` takes all.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vretrver.benchmarks.common import MissingDataError
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import Candidate, Query, Sample, TaskData

DEFAULT_ROOT = Path("/usr/share/tuxpaint/stamps")
INSTALL_COMMAND = "sudo apt-get install -y --no-install-recommends tuxpaint-stamps-default"
TASKS = ("tuxpaint_t2i", "tuxpaint_i2t")
SPLITS = ("test", "train", "full")


@dataclass(frozen=True)
class Pair:
    key: str  # path relative to the root, without extension: the drawing's id
    image: str  # absolute path of the PNG
    caption: str


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def caption_id(caption: str) -> str:
    return "caption:" + _sha(caption)[:12]


def read_pairs(root: str | os.PathLike = DEFAULT_ROOT) -> tuple[list[Pair], dict[str, int]]:
    """All (drawing, caption) pairs sorted by path, and counts of what was left out."""
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(
            f"Tux Paint stamps not found at {root}. Install them with:\n  {INSTALL_COMMAND}"
        )
    pairs: list[Pair] = []
    skipped = {"svg": 0, "no_caption": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != "symbols"]
        for name in filenames:
            stem, ext = os.path.splitext(name)
            if ext == ".svg":
                skipped["svg"] += 1
            if ext != ".png":
                continue
            caption = _first_line(Path(dirpath) / f"{stem}.txt")
            if not caption:
                skipped["no_caption"] += 1
                continue
            pairs.append(Pair((rel_dir / stem).as_posix(), str(Path(dirpath) / name), caption))
    if not pairs:
        raise MissingDataError(
            f"no captioned PNG stamps under {root}. Install them with:\n  {INSTALL_COMMAND}"
        )
    pairs.sort(key=lambda p: p.key)
    return pairs, skipped


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip()
    except FileNotFoundError:
        return ""


def _select(queries: list[Sample], keys: dict[str, str], split: str, limit: int | None, test_size: int):
    if split == "test":
        queries = sorted(queries, key=lambda s: _sha(keys[s.id]))[:test_size]
    elif split == "train":
        queries = sorted(queries, key=lambda s: _sha(keys[s.id]))[test_size:]
    return queries[:limit] if limit is not None else queries


def load_tuxpaint(
    data_root: str | os.PathLike | None = None,
    tasks: list[str] | tuple[str, ...] | None = None,
    split: str = "test",
    limit: int | None = None,
    test_size: int = 100,
) -> list[TaskData]:
    """Build ``tuxpaint_t2i`` and / or ``tuxpaint_i2t`` from the installed stamps."""
    if split not in SPLITS:
        raise ValueError(f"tuxpaint splits are {SPLITS}, got {split!r}")
    tasks = list(tasks or TASKS)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tuxpaint tasks are {TASKS}, got {t!r}")
    pairs, skipped = read_pairs(data_root or DEFAULT_ROOT)
    by_caption: dict[str, list[str]] = {}
    for p in pairs:
        by_caption.setdefault(p.caption, []).append(p.key)
    images = {p.key: Candidate(id=p.key, image=p.image) for p in pairs}
    captions = {caption_id(c): Candidate(id=caption_id(c), text=c) for c in by_caption}
    meta = {
        "benchmark": "tuxpaint",
        "split": split,
        "root": str(data_root or DEFAULT_ROOT),
        "n_pairs": len(pairs),
        "n_captions": len(by_caption),
        "skipped_svg": skipped["svg"],
        "skipped_no_caption": skipped["no_caption"],
    }
    out = []
    if "tuxpaint_t2i" in tasks:
        keys = {caption_id(c): c for c in by_caption}
        queries = [
            Sample(
                id=caption_id(c),
                query=Query(text=c, instruction="Find the drawing that matches this description."),
                positives=list(keys_),
                task="tuxpaint_t2i",
                dataset="tuxpaint",
                meta={"candidate_modality": "image", "split": split},
            )
            for c, keys_ in by_caption.items()
        ]
        queries = _select(queries, keys, split, limit, test_size)
        out.append(TaskData("tuxpaint_t2i", queries, images, SPEC.metric_for("tuxpaint_t2i"), {}, dict(meta)))
    if "tuxpaint_i2t" in tasks:
        queries = [
            Sample(
                id=p.key,
                query=Query(images=[p.image], instruction="Find the caption that describes this drawing."),
                positives=[caption_id(p.caption)],
                task="tuxpaint_i2t",
                dataset="tuxpaint",
                meta={"candidate_modality": "text", "split": split},
            )
            for p in pairs
        ]
        queries = _select(queries, {p.key: p.key for p in pairs}, split, limit, test_size)
        out.append(
            TaskData("tuxpaint_i2t", queries, captions, SPEC.metric_for("tuxpaint_i2t"), {}, dict(meta))
        )
    return out


SPEC = BenchmarkSpec(
    name="tuxpaint",
    description="embedded mini-benchmark from the Tux Paint stamps (text->image, image->text; offline)",
    reader=load_tuxpaint,
    files=(
        "<category>/.../<name>.png with <name>.txt beside it (Debian package tuxpaint-stamps-default, read"
        f" in place from {DEFAULT_ROOT}; install: {INSTALL_COMMAND})",
    ),
    tasks=TASKS,
    splits=SPLITS,
    needs_data_root=False,
)
