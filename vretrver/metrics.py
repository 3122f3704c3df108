"""Retrieval metrics as the papers compute them, and the paper's reference numbers.

- Recall@k is UniIR's hit rate: 1 if ANY positive is among the top k, else 0, averaged over queries.
  CIRCO is the exception: its Recall@k counts only the query's ``target_img_id`` (the image the relative
  caption was written for), while its mAP@k uses every ground-truth image (``recall_positives``).
- mAP@k is CIRCO's: AP@k = sum_{i<=k} P@i * rel_i / min(#positives, k), averaged over queries.
  CIRCO's scorer refuses a ranking that repeats an id; here a repeated id keeps its rank but earns
  nothing, so on rankings without repeats the two agree exactly.

All metrics are fractions in [0, 1]; :data:`PAPER_RESULTS` keeps the paper's percentages as printed.
A query without positives cannot be scored: :func:`score_task` leaves it out and counts it
(``n_no_positives``) instead of scoring it 0, and a query with no run at all scores 0 but is counted
(``n_missing_run``) so a crashed or partial run shows up in the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# The 16 M-BEIR (query task, dataset) pairs in the order of every published table.
MBEIR_TASKS: tuple[str, ...] = (
    "visualnews_task0",
    "mscoco_task0",
    "fashion200k_task0",
    "webqa_task1",
    "edis_task2",
    "webqa_task2",
    "visualnews_task3",
    "mscoco_task3",
    "fashion200k_task3",
    "nights_task4",
    "oven_task6",
    "infoseek_task6",
    "fashioniq_task7",
    "cirr_task7",
    "oven_task8",
    "infoseek_task8",
)

# Paper numbers (percent, as printed) for the result tables. M-BEIR: local pools, top-50 reranked.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "mbeir": {
        "V-Retrver-7B": {
            "visualnews_task0": 51.8,
            "mscoco_task0": 87.5,
            "fashion200k_task0": 40.3,
            "webqa_task1": 96.9,
            "edis_task2": 82.9,
            "webqa_task2": 90.2,
            "visualnews_task3": 52.2,
            "mscoco_task3": 94.8,
            "fashion200k_task3": 37.8,
            "nights_task4": 39.8,
            "oven_task6": 69.8,
            "infoseek_task6": 73.2,
            "fashioniq_task7": 51.2,
            "cirr_task7": 73.5,
            "oven_task8": 87.8,
            "infoseek_task8": 85.0,
            "average": 69.7,
        },
        "LamRA-7B": {"average": 63.7},
        "U-MARVEL-7B": {"average": 64.8},
        "Qwen2.5-VL-7B": {"average": 46.7},
    },
    # Zero-shot sets, top-10 reranked; genecis is the mean over its four subtasks.
    "zeroshot": {
        "V-Retrver-7B": {"circo": 48.2, "genecis": 30.7, "visdial": 75.1, "vist": 31.2, "mtfiq": 68.3},
    },
    # Training-stage ablation: average over mscoco_task0, fashion200k_task3, cirr_task7, oven_task6.
    "ablation": {
        "base": {"average": 47.2},
        "SFT": {"average": 59.4},
        "SFT+RFT": {"average": 60.9},
        "SFT+RL": {"average": 66.3},
        "full": {"average": 67.2},
        "RL with text-only reasoning (no tools)": {"average": 61.8},
    },
}


def paper_metric(task_name: str) -> str:
    """The metric the paper reports for a task, from its benchmark's spec (unknown tasks: R@5)."""
    from vretrver.benchmarks.registry import paper_metric_of  # the specs read this module's task lists

    return paper_metric_of(task_name)


def _check(positives: Iterable[str], k: int) -> set[str]:
    pos = set(positives)
    if not pos:
        raise ValueError("a query without positives cannot be scored; leave it out and count it")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return pos


def recall_at_k(ranked: Sequence[str], positives: Iterable[str], k: int) -> float:
    """UniIR hit rate: 1.0 if any positive is in the top k of ``ranked``, else 0.0."""
    pos = _check(positives, k)
    return 1.0 if any(d in pos for d in list(ranked)[:k]) else 0.0


def expand_copies(ranked: Sequence[str], copies: Mapping[str, int]) -> list[str]:
    """``ranked`` with each id repeated as often as the upstream candidate list holds it.

    Where an upstream evaluation embeds a candidate list that names an image twice (multi-turn FashionIQ's
    image split, a GeneCIS gallery holding its target again, LamRA's concatenated M-BEIR pools), both copies
    get the same vector and sit next to each other in its ranking, each taking a rank. Our pools keep one
    copy per id; expanding the ranking afterwards gives the upstream ranks exactly (ties between copies
    broken towards the first copy, as a stable sort does).
    """
    if not copies:
        return list(ranked)
    out: list[str] = []
    for d in ranked:
        out.extend([d] * max(1, copies.get(d, 1)))
    return out


def average_precision_at_k(ranked: Sequence[str], positives: Iterable[str], k: int) -> float:
    """CIRCO AP@k: sum over ranks i <= k of precision@i at each hit, divided by min(#positives, k)."""
    pos = _check(positives, k)
    hits, total, seen = 0, 0.0, set()
    for i, d in enumerate(list(ranked)[:k], 1):
        # A repeated id keeps its slot but earns nothing the second time.
        if d in pos and d not in seen:
            hits += 1
            total += hits / i
        seen.add(d)
    return total / min(len(pos), k)


@dataclass
class TaskScore:
    """Metrics of one task plus the counts a report must show next to them."""

    metrics: dict[str, float]
    n_scored: int  # queries that entered the averages
    n_no_positives: int = 0  # queries (or runs) without any positive: left out, not scored 0
    n_missing_run: int = 0  # judged queries with no ranking at all: scored 0
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)


def score_task(
    runs: Mapping[str, Sequence[str]],
    positives: Mapping[str, Iterable[str]],
    ks: Sequence[int] = (1, 5, 10),
    map_ks: Sequence[int] = (),
    keep_per_query: bool = False,
    recall_positives: Mapping[str, Iterable[str]] | None = None,
) -> TaskScore:
    """Score ranked lists against positives.

    The judged queries are the keys of ``positives`` with at least one positive. Runs of queries that
    have no positives (empty list, or absent from ``positives``) are counted in ``n_no_positives``.
    With nothing to score every metric is NaN, so an average over it is NaN too rather than a false 0.
    ``recall_positives``: for the queries it names, R@k counts only these ids (CIRCO: the target image)
    while mAP@k still uses all of ``positives``.
    """
    names = [f"R@{k}" for k in ks] + [f"mAP@{k}" for k in map_ks]
    sums = dict.fromkeys(names, 0.0)
    per_query: dict[str, dict[str, float]] = {}
    n_scored = n_missing = 0
    judged = {q: set(p) for q, p in positives.items()}
    n_no_pos = sum(1 for p in judged.values() if not p)
    n_no_pos += sum(1 for q in runs if q not in judged)
    for qid, pos in judged.items():
        if not pos:
            continue
        ranked = runs.get(qid)
        if ranked is None:
            n_missing += 1
            ranked = []
        hit_ids = pos
        if recall_positives is not None and recall_positives.get(qid):
            hit_ids = set(recall_positives[qid])
        row = {f"R@{k}": recall_at_k(ranked, hit_ids, k) for k in ks}
        row.update({f"mAP@{k}": average_precision_at_k(ranked, pos, k) for k in map_ks})
        for name in names:
            sums[name] += row[name]
        if keep_per_query:
            per_query[qid] = row
        n_scored += 1
    metrics = {n: (sums[n] / n_scored if n_scored else math.nan) for n in names}
    return TaskScore(metrics, n_scored, n_no_pos, n_missing, per_query)


def task_metrics(
    runs: Mapping[str, Sequence[str]],
    positives: Mapping[str, Iterable[str]],
    ks: Sequence[int] = (1, 5, 10),
    map_ks: Sequence[int] = (),
    recall_positives: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, float]:
    """``{"R@1": ..., "R@5": ..., "mAP@5": ...}`` as fractions; see :func:`score_task` for the counts."""
    return score_task(runs, positives, ks, map_ks, recall_positives=recall_positives).metrics


def benchmark_average(per_task: Mapping[str, Mapping[str, float]]) -> float:
    """Plain mean over tasks of each task's paper metric (the papers' "average" column)."""
    if not per_task:
        raise ValueError("no tasks to average")
    values = []
    for task, metrics in per_task.items():
        name = paper_metric(task)
        if name not in metrics:
            raise KeyError(f"task {task!r} has no {name} (its paper metric); it has {sorted(metrics)}")
        values.append(metrics[name])
    return sum(values) / len(values)
