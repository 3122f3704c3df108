"""The first stage of a task: its top-N lists, computed once per result folder and read back on resume.

Per-query restrictions the readers put in ``Sample.meta`` are honoured: ``candidate_modality`` and
``gallery`` by the search itself, ``exclude`` (ids a query must never return) here, by fetching deeper and
filtering.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vretrver.benchmarks import registry
from vretrver.evaluation.files import read_rows
from vretrver.evaluation.inputs import exclusions
from vretrver.samples import TaskData, atomic_write_text, write_jsonl

if TYPE_CHECKING:
    from vretrver.evaluation.config import EvalConfig


def depth_of(task: TaskData, cfg: EvalConfig) -> int:
    """How many first-stage candidates a query keeps: top-N, or more where the benchmark scores or submits
    deeper (CIRCO: 50, for mAP@50 and its server)."""
    spec = registry.spec_of_task(task.name, cfg.benchmark)
    return max(cfg.resolved_top_n(), spec.min_depth if spec is not None else 0)


def first_stage_runs(
    task: TaskData,
    cfg: EvalConfig,
    out: Path,
    embedder_cache: dict[str, Any],
    progress: bool = True,
    loaded: TaskData | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Every query's first-stage list (saved once per result folder, read back on resume).

    A precomputed file's lost entries stop the run beyond ``cfg.max_unresolved``; their counts are saved
    beside the lists (:func:`after_first_stage`). ``loaded``: the task as read, before queries and
    candidates were dropped (entries naming those are not unknown).
    """
    path = out / "first_stage" / f"{task.name}.jsonl"
    if path.is_file():
        rows, intact = read_rows(path, "; the first stage is computed again")
        if intact:
            return {r["qid"]: list(zip(r["ranked"], r["scores"])) for r in rows}
    from vretrver.retrieval.search import first_stage

    depth = depth_of(task, cfg)
    excluded = exclusions(task)
    # Excluded ids may fill the top of a list: fetch deeper by as many as a query excludes at most.
    fetch = depth + max((len(v) for v in excluded.values()), default=0)
    if cfg.retriever.startswith("precomputed:"):
        # A candidate file (our jsonl or V-Retrver's parquet); no embedder is built.
        from vretrver.retrieval.precomputed import check_losses, read_candidates

        src = precomputed_path(cfg, task)
        lists, stats = read_candidates(
            src,
            task,
            is_other_query=_other_query(task, cfg, {q.id for q in (loaded or task).queries}),
            full_pool=(loaded or task).pool,
        )
        check_losses(stats, src, cfg.max_unresolved)
        # Before the lists: their file marks the stage as done.
        atomic_write_text(_issues_path(out, task), json.dumps(stats.issues()))
        runs = first_stage(task, cfg.retriever, top_n=fetch, precomputed=lists)
    else:
        from vretrver.retrieval.base import make_embedder

        if cfg.retriever not in embedder_cache:
            embedder_cache[cfg.retriever] = make_embedder(cfg.retriever)
        runs = first_stage(
            task,
            embedder_cache[cfg.retriever],
            top_n=fetch,
            cache_dir=cfg.cache_dir or str(out / "cache"),
            index=cfg.index,
            ray_address=cfg.ray_address,
            num_workers=cfg.ray_workers,
            progress=progress,
        )
    runs = {q: [(d, s) for d, s in r if d not in excluded.get(q, ())][:depth] for q, r in runs.items()}
    write_jsonl(
        path,
        (
            {"qid": q, "ranked": [d for d, _ in r], "scores": [float(s) for _, s in r]}
            for q, r in runs.items()
        ),
    )
    return runs


def precomputed_path(cfg: EvalConfig, task: TaskData) -> str:
    """The candidate file of a task (``{task}`` in the path is the task's name)."""
    return cfg.retriever.split(":", 1)[1].replace("{task}", task.name)


def _other_query(task: TaskData, cfg: EvalConfig, loaded: Collection[str]) -> Callable[[str], bool]:
    """Which row ids of a precomputed file name real queries that this task does not score."""
    known = task.meta.get("query_ids") or ()  # a reader may keep every id of its query file
    if "{task}" not in cfg.retriever or (not known and cfg.limit is not None):
        # A file shared by several tasks lists their queries too; a limit hides the queries past it.
        return lambda q: True
    return lambda q: q in known or q in loaded


def _issues_path(out: Path, task: TaskData) -> Path:
    return out / "first_stage" / f"{task.name}.issues.json"


def after_first_stage(task: TaskData, cfg: EvalConfig, out: Path) -> TaskData:
    """The task with what its first stage found: counts of lost precomputed entries (saved, so a resumed
    run reports them too) and, with ``cfg.parquet_prompts``, each query's prompt from the parquet in
    ``meta["parquet_prompt"]`` (the reranked samples carry it)."""
    issues = dict(task.issues)
    side = _issues_path(out, task)
    if side.is_file():
        issues.update(json.loads(side.read_text()))
    queries = task.queries
    if cfg.parquet_prompts:
        from vretrver.retrieval.precomputed import read_parquet_prompts

        prompts = read_parquet_prompts(precomputed_path(cfg, task), task)
        queries = [
            replace(q, meta={**q.meta, "parquet_prompt": prompts[q.id]}) if q.id in prompts else q
            for q in queries
        ]
        issues["no_parquet_prompt"] = sum(1 for q in queries if q.id not in prompts)
    return replace(task, queries=queries, issues=issues)
