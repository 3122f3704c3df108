"""GeneCIS (conditional similarity, four subtasks), read from its public distribution.

Each query ranks its own gallery (``meta["gallery"]``, target included); the Visual Genome crops of the
attribute subtasks are cut once from the full images when they are not on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vretrver.benchmarks.common import (
    MissingDataError,
    as_list,
    bad,
    check_duplicates,
    copies_of,
    item,
    load_json,
    require,
)
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import Candidate, Query, Sample, TaskData

GENECIS_TASKS = ("change_attribute", "change_object", "focus_attribute", "focus_object")


def _vg_crop(src: Path, bbox: Sequence[float], dst: Path) -> None:
    """Cut a Visual Genome instance as GeneCIS does: box widened by 70 %, padded to a black square."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        x, y, w, h = (float(v) for v in bbox[:4])
        left, top = max(0.0, x - 0.7 * w), max(0.0, y - 0.7 * h)
        right, bottom = min(im.width, left + 1.7 * w), min(im.height, top + 1.7 * h)
        crop = im.crop((left, top, right, bottom))
    side = max(crop.size)
    square = Image.new("RGB", (side, side))
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    square.save(tmp, format="JPEG", quality=95)
    os.replace(tmp, dst)


def _vg_source(image_id: str, vg_dirs: list[Path]) -> Path | None:
    for d in vg_dirs:
        p = d / f"{image_id}.jpg"
        if p.exists():
            return p
    return None


def _genecis_task(
    root: Path, task: str, limit: int | None, vg_dirs: list[Path], duplicates: str = "keep"
) -> TaskData:
    candidates = [root / "annotations" / f"{task}.json", root / "genecis" / f"{task}.json"]
    ann_path = next((p for p in candidates if p.exists()), None)
    if ann_path is None:
        require(candidates[:1], "GeneCIS", f"(or {candidates[1]})")
    coco = task.endswith("_object")
    if coco:
        require([root / "val2017"], "GeneCIS")
    pool: dict[str, Candidate] = {}
    queries: list[Sample] = []
    unresolved: list[str] = []

    def image(obj: Any, where: str, index: int, role: int) -> str:
        if coco:
            obj = item(obj, where, ("val_image_id",))
            cid = str(obj["val_image_id"])
            if not cid.isdigit():
                raise bad(where, "val_image_id", "a COCO image id", obj["val_image_id"])
            path = root / "val2017" / f"{int(cid):012d}.jpg"
        else:
            obj = item(obj, where, ("image_id", "instance_bbox"))
            cid = f"{obj['image_id']}_{index}_{role}"
            path = root / "vg" / task / f"{cid}.jpg"
            if not path.exists():
                src = _vg_source(str(obj["image_id"]), vg_dirs)
                if src is None:
                    unresolved.append(str(path))
                else:
                    _vg_crop(src, obj["instance_bbox"], path)
        pool.setdefault(cid, Candidate(id=cid, image=str(path)))
        return cid

    for i, a in enumerate(as_list(load_json(ann_path), ann_path, "queries")[:limit]):
        where = f"{ann_path} [item {i}]"
        a = item(a, where, ("reference", "target", "condition", "gallery"))
        if not isinstance(a["gallery"], list):
            raise bad(where, "gallery", "a list", a["gallery"])
        ref = image(a["reference"], f"{where} reference", i, 0)
        target = image(a["target"], f"{where} target", i, 1)
        gallery = [image(g, f"{where} gallery[{j}]", i, 2 + j) for j, g in enumerate(a["gallery"])]
        # Sorted so the target's position in the gallery carries no hint.
        meta: dict[str, Any] = {
            "candidate_modality": "image",
            "gallery": sorted({target, *gallery}),
            "split": "val",
        }
        # The upstream scorer ranks [target, *gallery] as listed: a repeated image takes two ranks.
        copies = copies_of([target, *gallery])
        if copies and duplicates == "keep":
            meta["copies"] = copies
        queries.append(
            Sample(
                id=str(i),
                query=Query(
                    text=str(a["condition"]).strip(),
                    images=[pool[ref].image],
                    instruction=_GENECIS_INSTRUCTIONS[task],
                ),
                positives=[target],
                task=f"genecis_{task}",
                dataset="genecis",
                meta=meta,
            )
        )
    if unresolved:
        shown = "\n".join(f"  {p}" for p in unresolved[:10])
        raise MissingDataError(
            f"GeneCIS {task}: {len(unresolved)} Visual Genome crops are missing and their source images are not"
            f" in any of {[str(d) for d in vg_dirs]}, e.g.:\n{shown}"
        )
    name = f"genecis_{task}"
    return _task(name, queries, pool, benchmark="genecis", split="val", annotations=str(ann_path))


_GENECIS_INSTRUCTIONS = {
    "change_attribute": "Find the photo of the same kind of object with the attribute changed as described.",
    "change_object": "Find the photo of the same scene with the object changed as described.",
    "focus_attribute": "Find the photo that shares the described attribute with the reference object.",
    "focus_object": "Find the photo that contains the described object of the reference photo.",
}


def load_genecis(
    data_root: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    vg_dir: str | os.PathLike | None = None,
    duplicates: str = "keep",
) -> list[TaskData]:
    """GeneCIS: reference image + condition -> its own gallery (``meta["gallery"]``, target included).

    Unlike the original evaluation script, queries whose gallery is not of the most common length are
    kept. Visual Genome crops missing under ``vg/<task>/`` are cut once from the full images, found in
    ``vg_dir`` (default: ``VG_100K_all/``, ``VG_100K/``, ``VG_100K_2/`` under the data root).
    ``duplicates``: an image listed twice in ``[target, *gallery]`` takes two ranks ("keep", as the
    GeneCIS and LamRA scorers) or one ("drop").
    """
    check_duplicates(duplicates)
    root = Path(data_root).expanduser().resolve()
    names = [t.removeprefix("genecis_") for t in (tasks or GENECIS_TASKS)]
    for t in names:
        if t not in GENECIS_TASKS:
            raise ValueError(f"GeneCIS tasks are {GENECIS_TASKS}, got {t!r}")
    vg_dirs = [Path(vg_dir)] if vg_dir else [root / d for d in ("VG_100K_all", "VG_100K", "VG_100K_2")]
    return [_genecis_task(root, t, limit, vg_dirs, duplicates) for t in names]


def _task(
    name: str, queries: list[Sample], pool: dict[str, Candidate], issues: dict | None = None, **meta: Any
) -> TaskData:
    return TaskData(name, queries, pool, metric=SPEC.metric_for(name), issues=issues or {}, meta=meta)


SPEC = BenchmarkSpec(
    name="genecis",
    description="GeneCIS, four subtasks, each query ranks its own gallery",
    reader=load_genecis,
    files=(
        "annotations/{task}.json or genecis/{task}.json  (task: " + ", ".join(GENECIS_TASKS) + ")",
        "val2017/<12-digit id>.jpg  (COCO 2017 val images: change_object, focus_object)",
        "vg/{task}/<image_id>_<query index>_<role>.jpg  (Visual Genome crops: change_attribute, focus_attribute;"
        " role 0 reference, 1 target, 2.. gallery), or the Visual Genome 1.2 images in VG_100K/ and VG_100K_2/"
        " (or VG_100K_all/, or the folder given by --vg-dir) to cut them from on first use",
    ),
    paper_metric="R@1",
    tasks=tuple(f"genecis_{t}" for t in GENECIS_TASKS),
    splits=("val",),
    top_n=10,
    zero_shot=True,
    ks=(1, 2, 3),
    reader_options={"vg_dir": "genecis: the Visual Genome 1.2 image folder to cut missing crops from"},
)
