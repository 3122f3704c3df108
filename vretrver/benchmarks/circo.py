"""CIRCO (composed image retrieval on COCO 2017 unlabeled images), read from its public distribution.

The set's own folder is the data root (see ``SPEC.files``). Val is scored locally (R@k counts only the
query's ``target_img_id``, mAP@k every ground-truth image); test labels are private, so a test run is
written in the evaluation server's format (:func:`write_circo_submission`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vretrver.benchmarks.common import as_list, bad, item, load_json, require
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import Candidate, Query, Sample, TaskData, atomic_write_text

# CIRCO's evaluation server scores the top 50 of each query, and its local mAP goes up to @50.
DEPTH = 50


def load_circo(data_root: str | os.PathLike, split: str = "val", limit: int | None = None) -> list[TaskData]:
    """CIRCO: reference image + relative caption -> all COCO 2017 unlabeled images.

    The test split has no public labels (positives are empty); score it with the evaluation server via
    :func:`write_circo_submission`. ``meta["shared_concept"]`` keeps the annotators' disambiguation.
    Val queries keep ``meta["target_img_id"]``, the image the caption was written for: CIRCO's Recall@k
    counts only that one, its mAP@k every image of ``gt_img_ids`` (the positives).
    """
    if split not in ("val", "test"):
        raise ValueError(f"CIRCO splits are 'val' and 'test', got {split!r}")
    root = Path(data_root).expanduser().resolve()
    ann_path = root / "annotations" / f"{split}.json"
    info_path = root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    img_dir = root / "COCO2017_unlabeled/unlabeled2017"
    require([ann_path, info_path, img_dir], "CIRCO")
    pool: dict[str, Candidate] = {}
    info = item(load_json(info_path), str(info_path), ("images",))
    for i, im in enumerate(as_list(info["images"], info_path, "images")):
        im = item(im, f"{info_path} [images {i}]", ("id", "file_name"))
        pool[str(im["id"])] = Candidate(id=str(im["id"]), image=str(img_dir / im["file_name"]))
    keys = ("id", "reference_img_id", "relative_caption")
    keys += ("gt_img_ids", "target_img_id") if split == "val" else ()
    queries = []
    for i, a in enumerate(as_list(load_json(ann_path), ann_path, "queries")[:limit]):
        where = f"{ann_path} [item {i}]"
        a = item(a, where, keys)
        ref = str(a["reference_img_id"])
        if ref not in pool:
            raise bad(where, "reference_img_id", f"an image listed in {info_path.name}", ref)
        meta = {"candidate_modality": "image", "split": split, "shared_concept": a.get("shared_concept")}
        gt = [str(x) for x in a.get("gt_img_ids", [])]
        if split == "val":
            target = str(a["target_img_id"])
            if target not in gt:
                raise bad(where, "target_img_id", "one of gt_img_ids", a["target_img_id"])
            meta["target_img_id"] = target
        queries.append(
            Sample(
                id=str(a["id"]),
                query=Query(
                    text=str(a["relative_caption"]).strip(),
                    images=[pool[ref].image],
                    instruction="Find everyday photos that show the reference photo changed as described.",
                ),
                positives=gt,
                task="circo",
                dataset="circo",
                meta=meta,
            )
        )
    missing = sum(1 for s in queries for p in s.positives if p not in pool)
    issues = {"positives_not_in_pool": missing} if missing else {}
    # Test labels are private: the run is written as a submission file (submission_only), not scored.
    task_meta = {"benchmark": "circo", "split": split, "submission_only": split == "test"}
    return [_task("circo", queries, pool, issues, **task_meta)]


def write_circo_submission(
    path: str | os.PathLike,
    runs: Mapping[str, Sequence[str]],
    query_ids: Sequence[str] | None = None,
    k: int = 50,
) -> None:
    """Write CIRCO's server format ``{"<query id>": [top-50 image ids as ints]}`` atomically.

    Each ranking must hold at least ``k`` ids (the server wants exactly the top 50: merge a reranked
    top-10 with the first stage's top-50 before calling). ``query_ids`` checks that none is missing.
    """
    if query_ids is not None:
        absent = [q for q in query_ids if q not in runs]
        if absent:
            raise ValueError(f"CIRCO submission: {len(absent)} queries have no ranking, e.g. {absent[:5]}")
    out: dict[str, list[int]] = {}
    for qid, ranked in runs.items():
        ranked = list(dict.fromkeys(ranked))
        if len(ranked) < k:
            raise ValueError(f"CIRCO submission: query {qid} has {len(ranked)} distinct ids, needs {k}")
        out[str(qid)] = [int(d) for d in ranked[:k]]
    atomic_write_text(path, json.dumps(out))


def _task(
    name: str, queries: list[Sample], pool: dict[str, Candidate], issues: dict | None = None, **meta: Any
) -> TaskData:
    return TaskData(name, queries, pool, metric=SPEC.metric_for(name), issues=issues or {}, meta=meta)


SPEC = BenchmarkSpec(
    name="circo",
    description="CIRCO composed image retrieval (val scored locally; test -> submission file)",
    reader=load_circo,
    files=(
        "annotations/{split}.json  (split: val | test; from github.com/miccunifi/CIRCO)",
        "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
        "COCO2017_unlabeled/unlabeled2017/<file_name>.jpg",
    ),
    paper_metric="mAP@5",
    splits=("val", "test"),
    top_n=10,
    zero_shot=True,
    ks=(1, 5, 10, 25, 50),  # CIRCO's own ranks, plus R@1
    map_ks=(5, 10, 25, 50),
    min_depth=DEPTH,
    write_submission=lambda path, runs, qids: write_circo_submission(path, runs, qids, k=DEPTH),
)
