"""Training samples for reranking: the positive plus K-1 hard negatives from a first-stage retriever.

For each training query with a positive in the pool:

* one positive is chosen (uniformly, if the query has several);
* negatives are drawn from the retriever's top ``hard_pool`` (100) after removing every positive and
  every near-duplicate of a positive (same image file or same image bytes, same normalised text), plus
  the query's ``meta["exclude"]`` ids and, optionally, the ``skip_top`` highest-ranked negatives (often
  unlabelled positives);
* the positive goes to a uniformly random position among the K.

Every random choice uses a generator seeded by (seed, task, query id), so a sample does not change when
other tasks or queries are added. Tasks are balanced: ``total`` samples are split evenly across tasks
(a task with fewer usable queries gives its share to the others), each capped by ``max_per_task``.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vretrver.samples import Candidate, Sample, TaskData
from vretrver.sft.records import escape_sample

Ranked = Sequence[tuple[str, float]]


@dataclass
class HardNegativeConfig:
    k: int = 5  # candidates per sample (positive included): 5 for training, 20 at inference
    hard_pool: int = 100  # negatives come from the retriever's top-N
    skip_top: int = 0  # skip this many top-ranked non-positive candidates (likely false negatives)
    sampling: str = "random"  # "random": uniform among eligible; "top": the highest-ranked eligible
    image_identity: str = "path"  # "path": same file path; "content": also same bytes (reads the files)
    max_per_task: int | Mapping[str, int] | None = None
    total: int | None = None  # balanced across tasks
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (a positive and at least one negative), got {self.k}")
        if self.sampling not in ("random", "top"):
            raise ValueError(f"sampling must be 'random' or 'top', got {self.sampling!r}")
        if self.image_identity not in ("path", "content"):
            raise ValueError(f"image_identity must be 'path' or 'content', got {self.image_identity!r}")
        if self.hard_pool < self.k - 1:
            raise ValueError(f"hard_pool ({self.hard_pool}) must be at least k - 1 ({self.k - 1})")

    def cap(self, task: str) -> int | None:
        if isinstance(self.max_per_task, Mapping):
            return self.max_per_task.get(task)
        return self.max_per_task


def _rng(seed: int, *keys: str) -> random.Random:
    h = hashlib.sha256("\x1f".join([str(seed), *keys]).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


_WS = re.compile(r"\s+")


def normalize_text(t: str | None) -> str:
    return _WS.sub(" ", (t or "").strip().lower())


class _ImageKeys:
    """The identity of an image file: its path, or (``content``) a hash of its bytes, cached."""

    def __init__(self, mode: str):
        self.mode = mode
        self._cache: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if self.mode == "path":
            return path
        if path not in self._cache:
            try:
                with open(path, "rb") as f:
                    self._cache[path] = "sha256:" + hashlib.sha256(f.read()).hexdigest()
            except OSError:
                self._cache[path] = path  # unreadable: fall back to the path
        return self._cache[path]


def _duplicate_keys(c: Candidate, image_key: _ImageKeys) -> set[str]:
    keys = set()
    if c.image:
        keys.add("i:" + image_key(c.image))
    if c.text and normalize_text(c.text):
        keys.add("t:" + normalize_text(c.text))
    return keys


def allocate(
    available: Mapping[str, int], total: int | None, caps: Mapping[str, int | None]
) -> dict[str, int]:
    """How many samples each task gets: an even split of ``total`` (water-filling), within caps."""
    limit = {t: min(n, caps[t]) if caps.get(t) is not None else n for t, n in available.items()}
    if total is None:
        return dict(limit)
    out = dict.fromkeys(limit, 0)
    left = max(0, total)
    open_tasks = sorted(t for t in limit if limit[t] > 0)
    while left > 0 and open_tasks:
        share, extra = divmod(left, len(open_tasks))
        for i, t in enumerate(open_tasks):
            want = share + (1 if i < extra else 0)
            give = min(want, limit[t] - out[t])
            out[t] += give
            left -= give
        open_tasks = [t for t in open_tasks if out[t] < limit[t]]
        if share == 0 and extra == 0:
            break
    return out


def make_sample(
    query: Sample,
    ranked: Ranked,
    pool: Mapping[str, Candidate],
    cfg: HardNegativeConfig,
    task: str,
    image_key: _ImageKeys | None = None,
    reasons: Counter | None = None,
) -> Sample | None:
    """One training sample for ``query``, or None (the reason is counted in ``reasons``)."""
    reasons = reasons if reasons is not None else Counter()
    image_key = image_key or _ImageKeys(cfg.image_identity)
    rng = _rng(cfg.seed, task, query.id)
    positives = [p for p in dict.fromkeys(query.positives) if p in pool]
    if not positives:
        reasons["no_positive_in_pool"] += 1
        return None
    positive = rng.choice(positives)
    pos_set = set(query.positives)
    dup_keys: set[str] = set()
    for p in positives:
        dup_keys |= _duplicate_keys(pool[p], image_key)
    exclude = set(query.meta.get("exclude") or [])
    gallery = query.meta.get("gallery")
    gallery = set(gallery) if gallery else None

    eligible: list[tuple[str, int]] = []  # (id, retriever rank)
    skipped = 0
    for rank, (did, _score) in enumerate(ranked[: cfg.hard_pool]):
        if (
            did in pos_set
            or did not in pool
            or did in exclude
            or (gallery is not None and did not in gallery)
        ):
            continue
        if _duplicate_keys(pool[did], image_key) & dup_keys:
            reasons["near_duplicate_removed"] += 1
            continue
        if skipped < cfg.skip_top:
            skipped += 1
            continue
        eligible.append((did, rank))
    need = cfg.k - 1
    if len(eligible) < need:
        reasons["too_few_negatives"] += 1
        return None
    chosen = eligible[:need] if cfg.sampling == "top" else rng.sample(eligible, need)
    rng.shuffle(chosen)
    position = rng.randrange(cfg.k)
    ids = [d for d, _ in chosen]
    ids.insert(position, positive)
    ranks = {d: r for d, r in chosen}
    sample = Sample(
        id=f"{task}:{query.id}",
        query=query.query,
        candidates=[pool[d] for d in ids],
        positives=[positive],
        task=task,
        dataset=query.dataset,
        meta={
            **{k: v for k, v in query.meta.items() if k not in ("gallery", "exclude")},
            "qid": query.id,
            "positive_position": position + 1,
            "negative_ranks": [ranks[d] + 1 for d in ids if d in ranks],
            "all_positives": list(query.positives),
        },
    )
    sample, n_escaped = escape_sample(sample)
    if n_escaped:
        reasons["escaped_placeholders"] += n_escaped
    reasons["built"] += 1
    return sample


def build_training_samples(
    tasks: Sequence[TaskData],
    retrieved: Mapping[str, Mapping[str, Ranked]],
    config: HardNegativeConfig | None = None,
) -> tuple[list[Sample], dict[str, Any]]:
    """Rerank training samples for every task, balanced, with per-task statistics.

    ``retrieved[task.name][qid]`` is the first stage's ranked ``[(candidate id, score), ...]``
    (its top 100 or more). Returns the samples (task by task, in query order) and the statistics.
    """
    cfg = config or HardNegativeConfig()
    image_key = _ImageKeys(cfg.image_identity)
    usable: dict[str, list[Sample]] = {}
    stats: dict[str, Any] = {
        "config": {k: v for k, v in vars(cfg).items() if k != "max_per_task"},
        "tasks": {},
    }
    stats["config"]["max_per_task"] = (
        dict(cfg.max_per_task) if isinstance(cfg.max_per_task, Mapping) else cfg.max_per_task
    )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    for t in tasks:
        runs = retrieved.get(t.name)
        if runs is None:
            raise ValueError(f"no first-stage results for task {t.name!r} (have: {sorted(retrieved)})")
        # Cheap pre-filter so caps and the balance count only queries that can give a sample.
        usable[t.name] = [q for q in t.queries if any(p in t.pool for p in q.positives) and q.id in runs]
        stats["tasks"][t.name] = {
            "queries": len(t.queries),
            "no_first_stage_result": sum(1 for q in t.queries if q.id not in runs),
        }
    by_name = {t.name: t for t in tasks}
    quotas = allocate({n: len(q) for n, q in usable.items()}, cfg.total, {n: cfg.cap(n) for n in usable})
    out: list[Sample] = []
    for name in names:
        t = by_name[name]
        reasons: Counter = Counter()
        queries = usable[name]
        # A seeded shuffle then a walk: when a query cannot give a sample, the next one fills its place.
        order = list(queries)
        _rng(cfg.seed, name, "order").shuffle(order)
        built: list[Sample] = []
        for q in order:
            if len(built) >= quotas[name]:
                break
            s = make_sample(q, retrieved[name][q.id], t.pool, cfg, name, image_key, reasons)
            if s is not None:
                built.append(s)
        # Keep the benchmark's query order in the output (stable across runs and easy to diff).
        pos = {q.id: i for i, q in enumerate(t.queries)}
        built.sort(key=lambda s: pos[s.meta["qid"]])
        out.extend(built)
        st = stats["tasks"][name]
        st.update(
            usable_queries=len(queries),
            quota=quotas[name],
            samples=len(built),
            no_positive_in_pool=sum(1 for q in t.queries if not any(p in t.pool for p in q.positives)),
            too_few_negatives=reasons["too_few_negatives"],
            near_duplicates_removed=reasons["near_duplicate_removed"],
            escaped_placeholders=reasons["escaped_placeholders"],
        )
    stats["total_samples"] = len(out)
    positions = Counter(s.meta["positive_position"] for s in out)
    stats["positive_position_counts"] = {str(p): positions.get(p, 0) for p in range(1, cfg.k + 1)}
    return out, stats


def preselect_queries(
    tasks: Sequence[TaskData], config: HardNegativeConfig, margin: float = 1.25
) -> list[TaskData]:
    """Keep only as many queries per task as the quotas can use (plus a margin for queries that fail).

    Training splits are large (M-BEIR: 1.1 M queries); running the first stage only for the queries that
    can become samples saves most of the embedding time.
    """
    from dataclasses import replace

    usable = {t.name: [q for q in t.queries if any(p in t.pool for p in q.positives)] for t in tasks}
    quotas = allocate(
        {n: len(q) for n, q in usable.items()}, config.total, {n: config.cap(n) for n in usable}
    )
    out = []
    for t in tasks:
        order = list(usable[t.name])
        _rng(config.seed, t.name, "preselect").shuffle(order)
        keep = {q.id for q in order[: math.ceil(quotas[t.name] * margin) + 8]}
        out.append(replace(t, queries=[q for q in t.queries if q.id in keep]))
    return out
