"""Multi-turn FashionIQ (Yuan & Lam, SIGIR 2021), read from its public distribution.

A query is a sequence of rounds (shown item, feedback), kept in order in ``Query.images`` and
``meta["turns"]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vretrver.benchmarks.common import as_list, bad, check_duplicates, copies_of, item, load_json, require
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import Candidate, Query, Sample, TaskData


def load_mtfiq(
    data_root: str | os.PathLike,
    split: str = "val",
    category: str = "all",
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
    duplicates: str = "keep",
) -> list[TaskData]:
    """Multi-turn FashionIQ (Yuan & Lam, SIGIR 2021), the LamRA / MMRet setting.

    A query is a sequence of rounds (shown item, feedback); the feedback of each round describes the
    wanted item relative to the shown one (its two annotator sentences joined by "and"). The pool is
    ``image_splits/split.<category>.<split>.json``; images are ``<image_dir>/<name>.jpg`` (default
    ``images/`` under the data root). ``split.all.val.json`` names 17 images twice: with
    ``duplicates="keep"`` each copy takes a rank when scored, as in LamRA's evaluation; "drop" keeps one.
    """
    check_duplicates(duplicates)
    root = Path(data_root).expanduser().resolve()
    q_path = root / "data" / f"{category}.{split}.json"
    c_path = root / "image_splits" / f"split.{category}.{split}.json"
    img_dir = Path(image_dir).expanduser().resolve() if image_dir else root / "images"
    require([q_path, c_path, img_dir], "multi-turn FashionIQ")
    pool = {}
    names = as_list(load_json(c_path), c_path, "image names")
    for i, asin in enumerate(names):
        if not isinstance(asin, str) or not asin:
            raise bad(f"{c_path} [item {i}]", "<item>", "an image name", asin)
        pool.setdefault(asin, Candidate(id=asin, image=str(img_dir / f"{asin}.jpg")))
    copies = copies_of(names)
    queries: list[Sample] = []
    for i, q in enumerate(as_list(load_json(q_path), q_path, "queries")[:limit]):
        where = f"{q_path} [item {i}]"
        q = item(q, where, ("reference", "target"))
        target, refs = q["target"], q["reference"]
        if not (isinstance(target, list) and len(target) >= 2 and isinstance(target[1], str)):
            raise bad(where, "target", "[image url, image name]", target)
        if not (isinstance(refs, list) and refs):
            raise bad(
                where, "reference", "a non-empty list of [image url, [feedback, ...], image name]", refs
            )
        turns = []
        for r, ref in enumerate(refs):
            if not (isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[1], list)):
                raise bad(
                    f"{where} reference[{r}]", "reference", "[image url, [feedback, ...], image name]", ref
                )
            feedback = " and ".join(t.strip() for t in ref[1] if isinstance(t, str) and t.strip())
            turns.append({"text": feedback, "image": str(img_dir / f"{ref[2]}.jpg")})
        lines = [f"Image {k}: {t['text']}" for k, t in enumerate(turns, 1)]
        queries.append(
            Sample(
                id=str(i),
                query=Query(
                    text="\n".join(lines),
                    images=[t["image"] for t in turns],
                    instruction="Find the fashion item the shopper wants; each line says how it differs from that image.",
                ),
                positives=[target[1]],
                task="mtfiq",
                dataset="mtfiq",
                meta={"candidate_modality": "image", "split": split, "category": category, "turns": turns},
            )
        )
    missing = sum(1 for s in queries if s.positives[0] not in pool)
    issues = {"positives_not_in_pool": missing} if missing else {}
    meta: dict[str, Any] = {"benchmark": "mtfiq", "split": split, "category": category}
    if copies:
        extra = sum(n - 1 for n in copies.values())
        issues["repeated_dids" if duplicates == "keep" else "duplicate_dids"] = extra
        if duplicates == "keep":
            meta["copies"] = copies
    return [_task("mtfiq", queries, pool, issues, **meta)]


def _task(
    name: str, queries: list[Sample], pool: dict[str, Candidate], issues: dict | None = None, **meta: Any
) -> TaskData:
    return TaskData(name, queries, pool, metric=SPEC.metric_for(name), issues=issues or {}, meta=meta)


SPEC = BenchmarkSpec(
    name="mtfiq",
    description="multi-turn FashionIQ val, several (image, feedback) rounds -> image",
    reader=load_mtfiq,
    files=(
        "data/{category}.{split}.json  (github.com/yfyuan01/MultiturnFashionRetrieval; category: all | dress |"
        " shirt | toptee)",
        "image_splits/split.{category}.{split}.json",
        "images/<asin>.jpg  (FashionIQ images; or pass --image-dir, e.g. M-BEIR/mbeir_images/fashioniq_images;"
        " --category picks the category, default all)",
    ),
    paper_metric="R@5",
    splits=("val", "test", "train"),
    top_n=10,
    zero_shot=True,
    reader_options={
        "image_dir": "mtfiq: the FashionIQ image folder (default: DATA_ROOT/images)",
        "category": "mtfiq: all (default) | dress | shirt | toptee",
    },
)
