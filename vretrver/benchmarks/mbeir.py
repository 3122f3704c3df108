"""M-BEIR (TIGER-Lab/M-BEIR) read exactly as distributed.

Positives come from the qrels files (relevance > 0), as UniIR's evaluation does, not from the
``pos_cand_list`` of the query lines. Each query gets an instruction of
``instructions/query_instructions.tsv`` for its (dataset id, query modality, candidate modality): the
first one (``instruction="first"``), or one drawn per query, seeded by the query id
(``"random"`` / ``"random:SEED"``, LamRA's evaluation draws one at random), and
``meta["candidate_modality"]`` (the line's ``candidate_modality``, else the task's target modality),
which the first stage uses to filter the pool.

Pools are read line by line. ``pool="local"``: each task's own pool. ``pool="global"``: the 5.6 M-line
union pool, read once and shared by every task of the call; the modality filter applies.
``pool="lamra-global"``: LamRA's global setting, the 16 local pools one after the other, shared by every
task, with no modality filter; an id found in several local pools takes one rank per copy when scored
(``TaskData.meta["copies"]``, counted as ``repeated_dids``), as in LamRA's concatenated index. Input problems that do not stop the run are counted in ``TaskData.issues``:
``duplicate_qids`` (later copies dropped), ``empty_queries`` (no text and no image, dropped),
``no_positives`` (no qrels line with relevance > 0: kept, the metrics leave them out and count them),
``positives_not_in_pool`` (query-positive pairs whose id is not in the pool), ``no_instruction``,
``duplicate_dids`` (pool), ``missing_query_images`` (only with ``check_images=True``),
``qrels_unknown_queries`` (qrels lines whose query id is not in the query file). An empty query file is
an error.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from vretrver.benchmarks.common import bad, get_str, iter_jsonl, require
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.metrics import MBEIR_TASKS
from vretrver.samples import Candidate, Query, Sample, SampleError, TaskData

DATASET_IDS = {
    "visualnews": 0,
    "fashion200k": 1,
    "webqa": 2,
    "edis": 3,
    "nights": 4,
    "oven": 5,
    "infoseek": 6,
    "fashioniq": 7,
    "cirr": 8,
    "mscoco": 9,
}
# Target modality of each M-BEIR task id (task 5, image -> image,text, is not part of M-BEIR).
TASK_CANDIDATE_MODALITY = {
    0: "image",
    1: "text",
    2: "image,text",
    3: "text",
    4: "image",
    6: "text",
    7: "image",
    8: "image,text",
}
SPLITS = ("test", "val", "train")
POOLS = ("local", "global", "lamra-global")

# Named groups of M-BEIR tasks. "heldout": the paper's held-out-task setting (tasks left out of
# training); "ablation": the four tasks the training-stage ablation averages over.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "mbeir": MBEIR_TASKS,
    "heldout": ("nights_task4", "oven_task6", "oven_task8", "infoseek_task6", "infoseek_task8"),
    "ablation": ("mscoco_task0", "fashion200k_task3", "cirr_task7", "oven_task6"),
}

# Paths relative to the data root ({task} e.g. mscoco_task0, {split} test | val | train).
FILES: tuple[str, ...] = (
    "query/{split}/mbeir_{task}_{split}.jsonl",
    "qrels/{split}/mbeir_{task}_{split}_qrels.txt",
    "cand_pool/local/mbeir_{task}_cand_pool.jsonl  (pool='local'; MSCOCO test: mbeir_mscoco_task0_test_cand_pool.jsonl"
    " and mbeir_mscoco_task3_test_cand_pool.jsonl)",
    "cand_pool/global/mbeir_union_{split}_cand_pool.jsonl  (pool='global')",
    "pool='lamra-global': the 16 local pools above, all of them whatever --tasks picks",
    "instructions/query_instructions.tsv",
    "mbeir_images/...  (the image paths named in the jsonl files)",
)

_TASK_RE = re.compile(r"^([a-z0-9]+)_task(\d+)$")


def task_files(root: Path, task: str, split: str, pool: str) -> dict[str, Path]:
    """The files one task needs, by role."""
    if pool == "global":
        pool_path = root / "cand_pool/global" / f"mbeir_union_{split}_cand_pool.jsonl"
    else:
        # MSCOCO ships separate val and test pools; every other pair has a single local pool.
        name = f"{task}_test" if task.startswith("mscoco_") and split == "test" else task
        pool_path = root / "cand_pool/local" / f"mbeir_{name}_cand_pool.jsonl"
    return {
        "query": root / "query" / split / f"mbeir_{task}_{split}.jsonl",
        "qrels": root / "qrels" / split / f"mbeir_{task}_{split}_qrels.txt",
        "pool": pool_path,
        "instructions": root / "instructions/query_instructions.tsv",
    }


def read_instructions(path: Path) -> dict[tuple[str, str, str], list[str]]:
    """``{(dataset_id, query_modality, candidate_modality): [instruction, ...]}`` (non-empty texts in
    column order); the header is skipped."""
    out: dict[tuple[str, str, str], list[str]] = {}
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for n, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.rstrip("\n").split("\t")]
            texts = [p for p in parts[4:] if p]
            if len(parts) < 5 or not texts:
                raise SampleError(
                    f"{path}:{n}: expected tab-separated query modality, candidate modality, dataset, "
                    f"dataset id and at least one instruction, got {len(parts)} columns"
                )
            out.setdefault((parts[3], parts[0], parts[1]), texts)
    return out


def instruction_picker(spec: str) -> Callable[[str, list[str]], str]:
    """How a query's instruction is chosen from its list: ``first``, or ``random[:SEED]`` (seed 0), one
    drawn per query from a generator seeded by (seed, query id), so a run is reproducible whatever
    ``limit`` or task subset is used."""
    if spec == "first":
        return lambda qid, texts: texts[0]
    kind, _, seed = spec.partition(":")
    if kind != "random" or not (seed == "" or seed.lstrip("-").isdigit()):
        raise ValueError(f"instruction must be 'first', 'random' or 'random:SEED' (an integer), got {spec!r}")
    n = int(seed or 0)
    return lambda qid, texts: random.Random(f"{n}:{qid}").choice(texts)


def read_qrels(path: Path, lines_per_qid: dict[str, int] | None = None) -> dict[str, list[str]]:
    """``{qid: [did, ...]}`` for lines ``qid Q0 did relevance task_id`` with relevance > 0.

    ``lines_per_qid`` (if given) is filled with the number of lines of each query id.
    """
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{n}"
            if len(parts) != 5:
                raise bad(where, "<line>", "5 fields 'qid Q0 did relevance task_id'", line.strip())
            try:
                relevance = int(parts[3])
            except ValueError:
                raise bad(where, "relevance", "an integer", parts[3]) from None
            if lines_per_qid is not None:
                lines_per_qid[parts[0]] = lines_per_qid.get(parts[0], 0) + 1
            if relevance > 0:
                dids = out.setdefault(parts[0], [])
                if parts[2] not in dids:
                    dids.append(parts[2])
            else:
                out.setdefault(parts[0], [])
    return out


def iter_pool(path: Path, root: Path) -> Iterator[Candidate]:
    """Stream a pool file as Candidates with absolute image paths (nothing else is kept)."""
    prefix = str(root)
    for where, d in iter_jsonl(path):
        did = get_str(d, "did", where)
        img = get_str(d, "img_path", where, optional=True)
        txt = get_str(d, "txt", where, optional=True)
        if not (img or txt):
            raise bad(where, "txt/img_path", "a candidate with text or an image", d.get("did"))
        if img and not os.path.isabs(img):
            img = os.path.join(prefix, img)
        yield Candidate(id=did, text=txt, image=img)


def _pool_bar(path: Path, root: Path, progress: bool) -> Iterator[Candidate]:
    """The candidates of a pool file behind a progress bar (pools hold up to 5.6 M lines)."""
    return tqdm(
        iter_pool(path, root),
        desc=f"pool {path.name}",
        unit=" cand",
        mininterval=5,
        leave=False,
        disable=not progress,
    )


def read_pool(
    path: Path, root: Path, issues: dict[str, int] | None = None, progress: bool = True
) -> dict[str, Candidate]:
    pool: dict[str, Candidate] = {}
    dups = 0
    for c in _pool_bar(path, root, progress):
        if c.id in pool:
            dups += 1
            continue
        pool[c.id] = c
    if issues is not None and dups:
        issues["duplicate_dids"] = dups
    return pool


def _parse_task(task: str) -> tuple[str, int]:
    m = _TASK_RE.match(task)
    if not m:
        raise ValueError(f"M-BEIR task names look like 'mscoco_task0', got {task!r}")
    return m.group(1), int(m.group(2))


def read_queries(
    path: Path,
    root: Path,
    task: str,
    split: str,
    positives: dict[str, list[str]],
    instructions: dict[tuple[str, str, str], list[str]],
    issues: dict[str, int],
    limit: int | None = None,
    pick: Callable[[str, list[str]], str] | None = None,
    all_qids: set[str] | None = None,
) -> list[Sample]:
    """The queries of a file (the first ``limit``); ``all_qids`` (if given) gets the id of every line."""
    _, task_id = _parse_task(task)
    pick = pick or instruction_picker("first")
    seen: set[str] = set()
    out: list[Sample] = []
    n_lines = 0
    for where, d in iter_jsonl(path):
        n_lines += 1
        qid = get_str(d, "qid", where)
        if limit is not None and len(out) >= limit:
            if all_qids is None:
                break
            all_qids.add(qid)  # past the limit only the id is read
            continue
        if all_qids is not None:
            all_qids.add(qid)
        if ":" not in qid:
            raise bad(where, "qid", "'<dataset_id>:<n>'", qid)
        text = get_str(d, "query_txt", where, optional=True)
        img = get_str(d, "query_img_path", where, optional=True)
        q_mod = get_str(d, "query_modality", where)
        c_mod = get_str(d, "candidate_modality", where, optional=True) or TASK_CANDIDATE_MODALITY.get(task_id)
        if qid in seen:
            issues["duplicate_qids"] = issues.get("duplicate_qids", 0) + 1
            continue
        seen.add(qid)
        if not (text or img):
            issues["empty_queries"] = issues.get("empty_queries", 0) + 1
            continue
        dataset_id = qid.split(":", 1)[0]
        texts = instructions.get((dataset_id, q_mod, c_mod or ""))
        instruction = pick(qid, texts) if texts else None
        if instruction is None:
            issues["no_instruction"] = issues.get("no_instruction", 0) + 1
        pos = positives.get(qid, [])
        if not pos:
            issues["no_positives"] = issues.get("no_positives", 0) + 1
        images = [img if os.path.isabs(img) else os.path.join(root, img)] if img else []
        meta = {"candidate_modality": c_mod, "query_modality": q_mod, "split": split}
        out.append(
            Sample(
                id=qid,
                query=Query(text=text, images=images, instruction=instruction),
                positives=list(pos),
                task=task,
                dataset="mbeir",
                meta=meta,
            )
        )
    if not n_lines:
        raise SampleError(
            f"{path}: the query file is empty; expected one JSON object per line with 'qid', 'query_txt', "
            "'query_img_path' and 'query_modality'"
        )
    return out


def load_mbeir(
    data_root: str | os.PathLike,
    tasks: list[str] | tuple[str, ...] | None = None,
    split: str = "test",
    pool: str = "local",
    limit: int | None = None,
    check_images: bool = False,
    progress: bool = True,
    instruction: str = "first",
) -> list[TaskData]:
    """Read M-BEIR tasks (default: the 16 evaluated pairs) from a data root laid out as distributed.

    ``limit`` keeps the first N queries of each task (the pool stays complete). With
    ``pool="global"`` or ``"lamra-global"`` all tasks share one pool dict (see the module docstring).
    ``instruction``: ``first`` or ``random[:SEED]`` (see :func:`instruction_picker`). ``progress`` shows
    a bar while a pool is read.
    """
    root = Path(data_root).expanduser().resolve()
    tasks = list(tasks or MBEIR_TASKS)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    pick = instruction_picker(instruction)
    for t in tasks:
        _parse_task(t)
    concatenated = pool == "lamra-global"
    files = {t: task_files(root, t, split, "local" if concatenated else pool) for t in tasks}
    needed = {p for f in files.values() for p in f.values()}
    local_pools = [task_files(root, t, split, "local")["pool"] for t in MBEIR_TASKS] if concatenated else []
    require(
        sorted(needed | set(local_pools)),
        "M-BEIR",
        "Download TIGER-Lab/M-BEIR from the Hugging Face hub and pass its folder as the data root.",
    )
    instructions = read_instructions(files[tasks[0]]["instructions"])
    pools: dict[Path, tuple[dict[str, Candidate], dict[str, int]]] = {}
    copies: dict[str, int] = {}
    if concatenated:
        cands, copies = read_concatenated_pools(local_pools, root, progress)
        extra = sum(n - 1 for n in copies.values())
        shared = (cands, {"repeated_dids": extra} if extra else {})
        pools = {files[t]["pool"]: shared for t in tasks}
    out: list[TaskData] = []
    for t in tasks:
        f = files[t]
        if f["pool"] not in pools:
            pool_issues: dict[str, int] = {}
            pools[f["pool"]] = (read_pool(f["pool"], root, pool_issues, progress), pool_issues)
        cands, pool_issues = pools[f["pool"]]
        issues = dict(pool_issues)
        qrels_lines: dict[str, int] = {}
        qids: set[str] = set()
        positives = read_qrels(f["qrels"], qrels_lines)
        queries = read_queries(f["query"], root, t, split, positives, instructions, issues, limit, pick, qids)
        # Qrels lines of ids the query file does not have (a mismatched or truncated download).
        unknown = sum(n for q, n in qrels_lines.items() if q not in qids)
        if unknown:
            issues["qrels_unknown_queries"] = unknown
        missing = sum(1 for s in queries for p in s.positives if p not in cands)
        if missing:
            issues["positives_not_in_pool"] = missing
        if check_images:
            n = sum(1 for s in queries for p in s.query.images if not os.path.exists(p))
            if n:
                issues["missing_query_images"] = n
        meta: dict = {"benchmark": "mbeir", "split": split, "pool": pool, "pool_path": str(f["pool"])}
        meta["query_ids"] = frozenset(qids)  # every id of the query file, limit or not (candidate files)
        if concatenated:
            # LamRA's global index: no candidate_modality filter, every copy of an id ranked.
            meta.update(pool_path=[str(p) for p in local_pools], modality_filter=False, copies=copies)
        out.append(TaskData(t, queries, cands, metric=MBEIR.metric_for(t), issues=issues, meta=meta))
    return out


def read_concatenated_pools(
    paths: list[Path], root: Path, progress: bool = True
) -> tuple[dict[str, Candidate], dict[str, int]]:
    """Pools read one after the other: the first record of each id, and ``{id: n}`` for the ids the
    files hold n > 1 times in all."""
    pool: dict[str, Candidate] = {}
    counts: dict[str, int] = {}
    for path in paths:
        for c in _pool_bar(path, root, progress):
            pool.setdefault(c.id, c)
            counts[c.id] = counts.get(c.id, 0) + 1
    return pool, {d: n for d, n in counts.items() if n > 1}


# The papers report R@5 on every M-BEIR task but Fashion200K's and FashionIQ's, which report R@10.
_R10 = {"fashion200k_task0": "R@10", "fashion200k_task3": "R@10", "fashioniq_task7": "R@10"}
MBEIR = BenchmarkSpec(
    name="mbeir",
    description="M-BEIR, the 16 evaluated pairs (local, global or lamra-global pool)",
    reader=load_mbeir,
    files=FILES,
    task_metrics=_R10,
    tasks=TASK_GROUPS["mbeir"],
    splits=SPLITS,
    pool_options=True,
)
HELDOUT = BenchmarkSpec(
    name="heldout",
    description="M-BEIR held-out tasks: NIGHTS task4, OVEN task6/8, InfoSeek task6/8",
    reader=load_mbeir,
    files=FILES,
    task_metrics=_R10,
    tasks=TASK_GROUPS["heldout"],
    splits=SPLITS,
    pool_options=True,
)
SPECS = (MBEIR, HELDOUT)
