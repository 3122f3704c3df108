"""The ``nano`` benchmark: synthetic images whose deciding detail is lost unless the model zooms.

Every image is 224 x 224 pixels of neutral grey (128) with a few large coloured decoy shapes and one small
mark, a 16 x 16 pixel shape at a fixed place, :data:`MARK_BOX` (x1, y1, x2, y2 = 144, 48, 160, 64 in
pixels of the file; 36, 12, 40, 16 in the 56 x 56 view of the nano model). The mark is drawn as a
checkerboard of 2-pixel cells in its colour ``c`` and the complementary colour ``256 - c``, built from
4 x 4 blocks aligned to the 4-pixel grid. The two tones average to the background grey, so once the
image is shrunk 4x to the model's input (56 x 56) the mark vanishes into the background (every pixel of
the model's view lies within 2 levels of grey there); cropping :data:`MARK_BOX` with ``crop_image``
shows it at about its own size, where both tones are plain. Decoy colours are drawn independently of
the answer: what the small view shows says nothing about which candidate matches.

Palette colours are chosen so that no colour lies near another's complement or near grey (the two tones
of a mark always name one palette colour), and with every channel in 1..255 (so is the complement).

Two tasks, each query a text naming the mark and its own gallery of ``k`` candidate images
(``meta["gallery"]``: the first stage ranks only those) with one positive:

* ``nano_colour``: "a red mark"; every mark is a square; the k candidates carry k different colours;
* ``nano_colour_shape``: "a red plus"; distractors share the colour or the shape of the query, never both.

Everything derives from ``(seed, split, task, query number, k)``: the same arguments give the same
queries and byte-identical PNG files, and train and test draw from separate random streams. The images
are written on first use under ``<data_root>/v<VERSION>/seed<seed>-k<k>/<split>/<task>/`` (default
data root ``<cache>/nano``, see :func:`vretrver.testing.tiny_models.default_cache_root`), each through
a temporary file renamed into place.

Each query's ``meta["detail"]`` tells a rule-based teacher where the detail is and what each candidate
shows: ``box`` (:data:`MARK_BOX`, pixels of the file), ``target`` (the query's mark, "red" or "red plus"),
``labels`` (candidate id -> the same kind of name) and ``marks`` (candidate id -> {"colour", "shape"}).
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vretrver.samples import Candidate, Query, Sample, TaskData
from vretrver.tools import ToolConfig

VERSION = 1  # bump when the images or queries change, so cached files are not reused
TASKS = ("nano_colour", "nano_colour_shape")
SPLITS = ("test", "train")  # the first is the default
DEFAULT_SIZES = {"train": 10000, "test": 200}  # queries per task and split
DEFAULT_K = 5
METRIC = "R@1"  # each query ranks its own k candidates: R@k would always be 1

IMAGE_SIZE = 224
INPUT_SIDE = 56  # the nano model's view of a whole image: 224 / 4, 2 x 2 merged vision tokens
GREY = 128
CELL = 2  # checker cell (pixels); a 4-pixel block holds 2 x 2 cells of alternating tones
BLOCK = 4  # the shrink factor from file to model view: one block becomes one pixel
MARK_BLOCKS = 4  # the mark is MARK_BLOCKS x MARK_BLOCKS blocks
MARK_SIZE = BLOCK * MARK_BLOCKS
MARK_BOX = (144, 48, 144 + MARK_SIZE, 48 + MARK_SIZE)  # pixels of the file; multiples of BLOCK
# Decoys stay out of this zone: the mark, the tool's 10 % padding around it and a margin.
_KEEP_OUT = (MARK_BOX[0] - 28, MARK_BOX[1] - 28, MARK_BOX[2] + 28, MARK_BOX[3] + 28)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 130, 10),
    "yellow": (230, 220, 30),
    "green": (30, 160, 30),
    "purple": (120, 30, 190),
    "white": (240, 240, 240),
}
# Shapes on the 4 x 4 grid of blocks (1 = the block is part of the mark).
SHAPES: dict[str, tuple[str, ...]] = {
    "square": ("1111", "1111", "1111", "1111"),
    "plus": ("0110", "1111", "1111", "0110"),
    "ring": ("1111", "1001", "1001", "1111"),
    "cross": ("1001", "0110", "0110", "1001"),
}
INSTRUCTION = "Find the image whose small mark matches the description."


def complement(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second tone of a mark: together with ``colour`` it averages to the background grey."""
    return tuple(2 * GREY - v for v in colour)  # type: ignore[return-value]


def tool_config() -> ToolConfig:
    """The tools' settings for the nano model: its processor shrinks every image to 56 x 56."""
    return ToolConfig(min_pixels=INPUT_SIDE * INPUT_SIDE, max_pixels=INPUT_SIDE * INPUT_SIDE)


def model_box(box: tuple[int, int, int, int] = MARK_BOX) -> list[int]:
    """``box`` (pixels of the file) in pixels of the model's 56 x 56 view (crop_image's coordinates)."""
    scale = INPUT_SIDE / IMAGE_SIZE
    return [round(v * scale) for v in box]


@dataclass(frozen=True)
class Mark:
    colour: str
    shape: str

    def label(self, task: str) -> str:
        """How a query, and a teacher's reasoning, names this mark."""
        return self.colour if task == "nano_colour" else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Decoy:
    kind: str  # "rectangle" | "ellipse"
    colour: str
    box: tuple[int, int, int, int]


@dataclass
class CandidateSpec:
    mark: Mark
    decoys: list[Decoy] = field(default_factory=list)


@dataclass
class QuerySpec:
    task: str
    split: str
    index: int
    text: str
    positive: int  # 0-based position of the positive among the candidates
    candidates: list[CandidateSpec]


# --------------------------------------------------------------------------- drawing


def render(spec: CandidateSpec) -> Image.Image:
    """The candidate image: grey background, decoys, and the mark at :data:`MARK_BOX`."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (GREY, GREY, GREY))
    draw = ImageDraw.Draw(img)
    for d in spec.decoys:
        shape = draw.rectangle if d.kind == "rectangle" else draw.ellipse
        shape([d.box[0], d.box[1], d.box[2] - 1, d.box[3] - 1], fill=COLOURS[d.colour])
    pixels = np.array(img)
    x1, y1, x2, y2 = MARK_BOX
    pixels[y1:y2, x1:x2] = mark_pixels(spec.mark)
    return Image.fromarray(pixels)


def mark_pixels(mark: Mark) -> np.ndarray:
    """The mark as a MARK_SIZE x MARK_SIZE x 3 array: checker of its two tones inside its shape."""
    tone = np.array(COLOURS[mark.colour], dtype=np.int16)
    other = np.array(complement(COLOURS[mark.colour]), dtype=np.int16)
    yy, xx = np.mgrid[0:MARK_SIZE, 0:MARK_SIZE]
    first = ((xx // CELL + yy // CELL) % 2 == 0)[..., None]
    checker = np.where(first, tone, other)
    blocks = np.array([[c == "1" for c in row] for row in SHAPES[mark.shape]])
    inside = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=bool))[..., None]
    return np.where(inside, checker, GREY).astype(np.uint8)


# --------------------------------------------------------------------------- drawing lots


def _rng(seed: int, split: str, task: str, index: int, k: int) -> random.Random:
    return random.Random(f"nano|v{VERSION}|{seed}|{split}|{task}|{index}|{k}")


def _decoys(rng: random.Random) -> list[Decoy]:
    out: list[Decoy] = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(50):
            w, h = rng.randint(24, 72), rng.randint(24, 72)
            x, y = rng.randint(0, IMAGE_SIZE - w), rng.randint(0, IMAGE_SIZE - h)
            a = (x, y, x + w, y + h)
            k = _KEEP_OUT
            if a[2] <= k[0] or a[0] >= k[2] or a[3] <= k[1] or a[1] >= k[3]:
                out.append(Decoy(rng.choice(("rectangle", "ellipse")), rng.choice(list(COLOURS)), a))
                break
    return out


def _marks(task: str, k: int, rng: random.Random) -> list[Mark]:
    """k distinct marks; the first is the positive's."""
    colours, shapes = list(COLOURS), list(SHAPES)
    if task == "nano_colour":
        if k > len(colours):
            raise ValueError(f"nano_colour has {len(colours)} colours; k={k} is too many")
        return [Mark(c, "square") for c in rng.sample(colours, k)]
    if k > len(colours) * len(shapes):
        raise ValueError(f"nano_colour_shape has {len(colours) * len(shapes)} marks; k={k} is too many")
    target = Mark(rng.choice(colours), rng.choice(shapes))
    # Hard negatives first: same colour other shape, same shape other colour; then any other mark.
    same_colour = [Mark(target.colour, s) for s in shapes if s != target.shape]
    same_shape = [Mark(c, target.shape) for c in colours if c != target.colour]
    marks = [target, rng.choice(same_colour), rng.choice(same_shape)][:k]
    rest = [Mark(c, s) for c in colours for s in shapes if Mark(c, s) not in marks]
    return marks + rng.sample(rest, k - len(marks))


def query_spec(task: str, split: str, index: int, seed: int = 0, k: int = DEFAULT_K) -> QuerySpec:
    """The ``index``-th query of a task and split: its text, candidates and positive (deterministic)."""
    rng = _rng(seed, split, task, index, k)
    marks = _marks(task, k, rng)
    target = marks[0]
    rng.shuffle(marks)
    candidates = [CandidateSpec(m, _decoys(rng)) for m in marks]
    text = f"a {target.colour} mark" if task == "nano_colour" else f"a {target.colour} {target.shape}"
    return QuerySpec(task, split, index, text, marks.index(target), candidates)


# --------------------------------------------------------------------------- the reader


def default_data_root() -> Path:
    from vretrver.testing.tiny_models import default_cache_root

    return default_cache_root() / "nano"


def _save_png(img: Image.Image, path: Path) -> None:
    """Write a PNG through a temporary file renamed into place (readers never see half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def spec_sample(spec: QuerySpec, qid: str, images: list[str]) -> Sample:
    """The benchmark query for ``spec`` (no candidates: its gallery lists them), candidate j's image at
    ``images[j]`` and id ``<qid>:<j>``."""
    ids = [f"{qid}:{j}" for j in range(len(spec.candidates))]
    detail = {
        "box": list(MARK_BOX),
        "target": spec.candidates[spec.positive].mark.label(spec.task),
        "labels": {cid: c.mark.label(spec.task) for cid, c in zip(ids, spec.candidates)},
        "marks": {
            cid: {"colour": c.mark.colour, "shape": c.mark.shape} for cid, c in zip(ids, spec.candidates)
        },
    }
    return Sample(
        id=qid,
        query=Query(text=spec.text, instruction=INSTRUCTION),
        positives=[ids[spec.positive]],
        task=spec.task,
        dataset="nano",
        meta={"candidate_modality": "image", "split": spec.split, "gallery": ids, "detail": detail},
    )


def _task(task: str, split: str, n: int, seed: int, k: int, folder: Path) -> TaskData:
    folder.mkdir(parents=True, exist_ok=True)
    queries: list[Sample] = []
    pool: dict[str, Candidate] = {}
    for i in range(n):
        spec = query_spec(task, split, i, seed, k)
        paths = []
        for j, c in enumerate(spec.candidates):
            path = folder / f"{i:06d}-{j}.png"
            if not path.is_file():
                _save_png(render(c), path)
            paths.append(str(path))
        q = spec_sample(spec, f"{task}:{split}:{i:06d}", paths)
        queries.append(q)
        pool.update((cid, Candidate(id=cid, image=p)) for cid, p in zip(q.meta["gallery"], paths))
    return TaskData(task, queries, pool, METRIC)


def load_nano(
    data_root: str | os.PathLike | None = None,
    tasks: list[str] | tuple[str, ...] | None = None,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    k: int = DEFAULT_K,
    size: int | None = None,
) -> list[TaskData]:
    """Generate (or reuse) the nano tasks: ``size`` queries per task (default 10000 train, 200 test),
    the first ``limit`` of them if given, each with its own gallery of ``k`` images."""
    if split not in SPLITS:
        raise ValueError(f"nano splits are {SPLITS}, got {split!r}")
    tasks = list(tasks or TASKS)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"nano tasks are {TASKS}, got {t!r}")
    if k < 2:
        raise ValueError(f"nano needs k >= 2 candidates per query, got {k}")
    n = DEFAULT_SIZES[split] if size is None else size
    if limit is not None:
        n = min(n, limit)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    base = root / f"v{VERSION}" / f"seed{seed}-k{k}" / split
    out = []
    for t in tasks:
        task = _task(t, split, n, seed, k, base / t)
        task.meta = {
            "benchmark": "nano",
            "split": split,
            "seed": seed,
            "k": k,
            "root": str(root),
            "mark_box": list(MARK_BOX),
            "model_mark_box": model_box(),
        }
        out.append(task)
    return out


def gallery_samples(task: TaskData) -> list[Sample]:
    """The task's queries with their gallery as candidates, in generated order (the positive anywhere):
    what a first stage that keeps the gallery's order would hand the reranker."""
    out = []
    for q in task.queries:
        s = Sample.from_dict(q.to_dict())
        s.candidates = [task.pool[c] for c in q.meta["gallery"]]
        out.append(s)
    return out


def benchmark_spec():
    """The benchmark's :class:`~vretrver.benchmarks.spec.BenchmarkSpec`, registered as ``--benchmark nano``
    (:mod:`vretrver.benchmarks.nano`)."""
    from vretrver.benchmarks.nano import SPEC

    return SPEC
