"""Visual Storytelling (SIS) as story -> last image retrieval, read from its public distribution.

Multi-image queries keep the images in order in ``Query.images``, refer to them as "image 1", "image 2"
... in ``Query.text``, and keep the sentences in ``meta["turns"]`` for renderers that interleave them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vretrver.benchmarks.common import as_list, item, load_json, require
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import Candidate, Query, Sample, TaskData

_VIST_EXT = {".jpg": 0, ".jpeg": 1, ".png": 2, ".gif": 3}


def load_vist(data_root: str | os.PathLike, split: str = "val", limit: int | None = None) -> list[TaskData]:
    """VIST (SIS): a story's sentences with all its images but the last -> the last image.

    The pool is every image of the split's stories that is on disk; stories with an image missing are
    skipped and counted (``issues["stories_missing_images"]``), as Flickr has lost some photos.
    ``meta["exclude"]`` lists the story's earlier images, which are never the answer.
    """
    root = Path(data_root).expanduser().resolve()
    path, img_dir = root / "sis" / f"{split}.story-in-sequence.json", root / "images" / split
    require([path, img_dir], "Visual Storytelling")
    files: dict[str, str] = {}
    for f in sorted(os.listdir(img_dir), key=lambda f: _VIST_EXT.get(os.path.splitext(f)[1].lower(), 9)):
        stem, ext = os.path.splitext(f)
        if ext.lower() in _VIST_EXT:
            files.setdefault(stem, f)  # one file per photo id, preferring JPEG
    stories: dict[str, list[tuple[int, str, str]]] = {}
    anns = as_list(item(load_json(path), str(path), ("annotations",))["annotations"], path, "annotations")
    for i, a in enumerate(anns):
        where = f"{path} [annotations {i}]"
        a = a[0] if isinstance(a, list) and len(a) == 1 else a
        a = item(a, where, ("story_id", "text", "photo_flickr_id", "worker_arranged_photo_order"))
        order = a["worker_arranged_photo_order"]
        stories.setdefault(str(a["story_id"]), []).append((int(order), str(a["photo_flickr_id"]), a["text"]))
    pool = {
        pid: Candidate(id=pid, image=str(img_dir / files[pid]))
        for pid in sorted({p for s in stories.values() for _, p, _ in s})
        if pid in files
    }
    issues: dict[str, int] = {}
    queries: list[Sample] = []
    for sid, turns in stories.items():
        turns.sort(key=lambda t: t[0])
        if len(turns) < 2:
            issues["short_stories"] = issues.get("short_stories", 0) + 1
            continue
        if any(p not in pool for _, p, _ in turns):
            issues["stories_missing_images"] = issues.get("stories_missing_images", 0) + 1
            continue
        earlier = [p for _, p, _ in turns[:-1]]
        lines = [f"{t.strip()} (image {k})" for k, (_, _, t) in enumerate(turns[:-1], 1)]
        lines.append(turns[-1][2].strip())
        meta = {
            "candidate_modality": "image",
            "split": split,
            "exclude": earlier,
            "turns": [{"text": t.strip(), "image": pool[p].image} for _, p, t in turns[:-1]]
            + [{"text": turns[-1][2].strip(), "image": None}],
        }
        queries.append(
            Sample(
                id=sid,
                query=Query(
                    text="\n".join(lines),
                    images=[pool[p].image for p in earlier],
                    instruction="Find the photo that goes with the last sentence of this story.",
                ),
                positives=[turns[-1][1]],
                task="vist",
                dataset="vist",
                meta=meta,
            )
        )
        if limit is not None and len(queries) >= limit:
            break
    return [_task("vist", queries, pool, issues, benchmark="vist", split=split)]


def _task(
    name: str, queries: list[Sample], pool: dict[str, Candidate], issues: dict | None = None, **meta: Any
) -> TaskData:
    return TaskData(name, queries, pool, metric=SPEC.metric_for(name), issues=issues or {}, meta=meta)


SPEC = BenchmarkSpec(
    name="vist",
    description="Visual Storytelling (SIS) val, story -> last image",
    reader=load_vist,
    files=(
        "sis/{split}.story-in-sequence.json  (SIS-with-labels)",
        "images/{split}/<photo id>.jpg|.png|.gif",
    ),
    paper_metric="R@1",
    splits=("val", "test", "train"),
    top_n=10,
    zero_shot=True,
)
