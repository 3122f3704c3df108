"""The paper's zero-shot sets, read from their public distributions.

Every reader takes the set's own folder as ``data_root``; :data:`REQUIRED_FILES` lists what it must hold.
Query ids are the sets' own ids (as strings), candidate ids the sets' image ids. Multi-image queries
(Visual Storytelling, multi-turn FashionIQ) keep the images in order in ``Query.images``, refer to them
as "image 1", "image 2" ... in ``Query.text``, and keep the rounds in ``meta["turns"]`` for renderers that
interleave text and images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vretrver.benchmarks.common import MissingDataError, bad, load_json, require
from vretrver.metrics import paper_metric
from vretrver.samples import Candidate, Query, Sample, TaskData, atomic_write_text

GENECIS_TASKS = ("change_attribute", "change_object", "focus_attribute", "focus_object")

REQUIRED_FILES: dict[str, list[str]] = {
    "circo": [
        "annotations/{split}.json  (split: val | test; from github.com/miccunifi/CIRCO)",
        "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json",
        "COCO2017_unlabeled/unlabeled2017/<file_name>.jpg",
    ],
    "genecis": [
        "annotations/{task}.json or genecis/{task}.json  (task: " + ", ".join(GENECIS_TASKS) + ")",
        "val2017/<12-digit id>.jpg  (COCO 2017 val images: change_object, focus_object)",
        "vg/{task}/<image_id>_<query index>_<role>.jpg  (Visual Genome crops: change_attribute, focus_attribute;"
        " role 0 reference, 1 target, 2.. gallery), or the Visual Genome 1.2 images in VG_100K/ and VG_100K_2/"
        " (or VG_100K_all/, or the folder given by --vg-dir) to cut them from on first use",
    ],
    "visdial": ["visdial_1.0_val.json", "VisualDialog_val2018/VisualDialog_val2018_<12-digit id>.jpg"],
    "vist": [
        "sis/{split}.story-in-sequence.json  (SIS-with-labels)",
        "images/{split}/<photo id>.jpg|.png|.gif",
    ],
    "mtfiq": [
        "data/{category}.{split}.json  (github.com/yfyuan01/MultiturnFashionRetrieval; category: all | dress |"
        " shirt | toptee)",
        "image_splits/split.{category}.{split}.json",
        "images/<asin>.jpg  (FashionIQ images; or pass --image-dir, e.g. M-BEIR/mbeir_images/fashioniq_images;"
        " --category picks the category, default all)",
    ],
}


def _item(d: Any, where: str, keys: Sequence[str]) -> dict:
    if not isinstance(d, dict):
        raise bad(where, "<item>", "a JSON object", d)
    for k in keys:
        if k not in d:
            raise bad(where, k, "present")
    return d


def _list(x: Any, path: Path, what: str) -> list:
    if not isinstance(x, list):
        raise bad(str(path), "<top level>", f"a JSON list of {what}", type(x).__name__)
    return x


# How a candidate id listed twice is scored: "keep" (default) gives every copy its own rank, as the
# upstream evaluation (LamRA's, the paper's source) does by embedding the list as is; "drop" scores each
# id once. See metrics.expand_copies.
DUPLICATES = ("keep", "drop")


def _check_duplicates(duplicates: str) -> None:
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")


def copies_of(ids: Sequence[str]) -> dict[str, int]:
    """``{id: n}`` for the ids that occur n > 1 times in ``ids``."""
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return {i: n for i, n in counts.items() if n > 1}


def _task(
    name: str, queries: list[Sample], pool: dict[str, Candidate], issues: dict | None = None, **meta: Any
) -> TaskData:
    return TaskData(name, queries, pool, metric=paper_metric(name), issues=issues or {}, meta=meta)


# --------------------------------------------------------------------------- CIRCO


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
    info = _item(load_json(info_path), str(info_path), ("images",))
    for i, im in enumerate(_list(info["images"], info_path, "images")):
        im = _item(im, f"{info_path} [images {i}]", ("id", "file_name"))
        pool[str(im["id"])] = Candidate(id=str(im["id"]), image=str(img_dir / im["file_name"]))
    keys = ("id", "reference_img_id", "relative_caption")
    keys += ("gt_img_ids", "target_img_id") if split == "val" else ()
    queries = []
    for i, a in enumerate(_list(load_json(ann_path), ann_path, "queries")[:limit]):
        where = f"{ann_path} [item {i}]"
        a = _item(a, where, keys)
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


# --------------------------------------------------------------------------- GeneCIS


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
            obj = _item(obj, where, ("val_image_id",))
            cid = str(obj["val_image_id"])
            if not cid.isdigit():
                raise bad(where, "val_image_id", "a COCO image id", obj["val_image_id"])
            path = root / "val2017" / f"{int(cid):012d}.jpg"
        else:
            obj = _item(obj, where, ("image_id", "instance_bbox"))
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

    for i, a in enumerate(_list(load_json(ann_path), ann_path, "queries")[:limit]):
        where = f"{ann_path} [item {i}]"
        a = _item(a, where, ("reference", "target", "condition", "gallery"))
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
    _check_duplicates(duplicates)
    root = Path(data_root).expanduser().resolve()
    names = [t.removeprefix("genecis_") for t in (tasks or GENECIS_TASKS)]
    for t in names:
        if t not in GENECIS_TASKS:
            raise ValueError(f"GeneCIS tasks are {GENECIS_TASKS}, got {t!r}")
    vg_dirs = [Path(vg_dir)] if vg_dir else [root / d for d in ("VG_100K_all", "VG_100K", "VG_100K_2")]
    return [_genecis_task(root, t, limit, vg_dirs, duplicates) for t in names]


# --------------------------------------------------------------------------- Visual Dialog


def _sentence(s: str, end: str) -> str:
    s = s.strip()
    return s if not s or s[-1] in ".?!" else s + end


def load_visdial(
    data_root: str | os.PathLike, rounds: int = 10, limit: int | None = None, with_caption: bool = True
) -> list[TaskData]:
    """Visual Dialog v1.0 val as text-to-image retrieval: caption + the first ``rounds`` Q/A -> its image.

    The pool is the 2,064 val images. This is the ChatIR / FROMAGe setting; LamRA's released script
    leaves the caption out (``with_caption=False`` reproduces that).
    """
    root = Path(data_root).expanduser().resolve()
    path, img_dir = root / "visdial_1.0_val.json", root / "VisualDialog_val2018"
    require([path, img_dir], "Visual Dialog")
    data = _item(load_json(path), str(path), ("data",))["data"]
    data = _item(data, f"{path} [data]", ("questions", "answers", "dialogs"))
    questions, answers = data["questions"], data["answers"]
    pool: dict[str, Candidate] = {}
    queries: list[Sample] = []
    for i, d in enumerate(_list(data["dialogs"], path, "dialogs")):
        where = f"{path} [dialogs {i}]"
        d = _item(d, where, ("image_id", "caption", "dialog"))
        iid = str(d["image_id"])
        pool[iid] = Candidate(id=iid, image=str(img_dir / f"VisualDialog_val2018_{int(iid):012d}.jpg"))
        if limit is not None and len(queries) >= limit:
            continue
        lines = [_sentence(d["caption"], ".")] if with_caption else []
        for r, turn in enumerate(d["dialog"][:rounds]):
            turn = _item(turn, f"{where} round {r}", ("question", "answer"))
            q, a = turn["question"], turn["answer"]
            if not (isinstance(q, int) and 0 <= q < len(questions)):
                raise bad(f"{where} round {r}", "question", f"an index below {len(questions)}", q)
            if not (isinstance(a, int) and 0 <= a < len(answers)):
                raise bad(f"{where} round {r}", "answer", f"an index below {len(answers)}", a)
            lines.append(f"Q: {_sentence(questions[q], '?')} A: {_sentence(answers[a], '.')}")
        queries.append(
            Sample(
                id=iid,
                query=Query(
                    text="\n".join(lines),
                    instruction="Find the everyday photo that this dialog is about.",
                ),
                positives=[iid],
                task="visdial",
                dataset="visdial",
                meta={"candidate_modality": "image", "split": "val", "rounds": rounds},
            )
        )
    return [_task("visdial", queries, pool, benchmark="visdial", split="val", rounds=rounds)]


# --------------------------------------------------------------------------- Visual Storytelling


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
    anns = _list(_item(load_json(path), str(path), ("annotations",))["annotations"], path, "annotations")
    for i, a in enumerate(anns):
        where = f"{path} [annotations {i}]"
        a = a[0] if isinstance(a, list) and len(a) == 1 else a
        a = _item(a, where, ("story_id", "text", "photo_flickr_id", "worker_arranged_photo_order"))
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


# --------------------------------------------------------------------------- multi-turn FashionIQ


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
    _check_duplicates(duplicates)
    root = Path(data_root).expanduser().resolve()
    q_path = root / "data" / f"{category}.{split}.json"
    c_path = root / "image_splits" / f"split.{category}.{split}.json"
    img_dir = Path(image_dir).expanduser().resolve() if image_dir else root / "images"
    require([q_path, c_path, img_dir], "multi-turn FashionIQ")
    pool = {}
    names = _list(load_json(c_path), c_path, "image names")
    for i, asin in enumerate(names):
        if not isinstance(asin, str) or not asin:
            raise bad(f"{c_path} [item {i}]", "<item>", "an image name", asin)
        pool.setdefault(asin, Candidate(id=asin, image=str(img_dir / f"{asin}.jpg")))
    copies = copies_of(names)
    queries: list[Sample] = []
    for i, q in enumerate(_list(load_json(q_path), q_path, "queries")[:limit]):
        where = f"{q_path} [item {i}]"
        q = _item(q, where, ("reference", "target"))
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
