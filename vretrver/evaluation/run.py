"""The whole run: every task's first stage, then the reranking, the metrics and the tables."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vretrver.benchmarks import registry
from vretrver.engines.base import Engine
from vretrver.evaluation.config import EvalConfig, result_dir
from vretrver.evaluation.first_stage import after_first_stage, first_stage_runs
from vretrver.evaluation.inputs import prepare_task
from vretrver.evaluation.reranker import Reranker
from vretrver.evaluation.results import engine_failures, rerank_task, warn_failures, with_candidates
from vretrver.metrics import TaskScore, expand_copies, paper_metric, score_task
from vretrver.report.tables import summarize, task_entry, write_summary, write_trec
from vretrver.samples import TaskData, atomic_write_text, write_samples


def _ks(task: TaskData, benchmark: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    spec = registry.spec_of_task(task.name, benchmark)
    return (spec.ks, spec.map_ks) if spec is not None else ((1, 5, 10), ())


def score_runs(task: TaskData, runs: dict[str, list[str]], benchmark: str) -> TaskScore:
    """Metrics of one task's rankings, as the upstream evaluation computes them.

    Ids an upstream candidate list holds more than once (``meta["copies"]`` of the task or the query)
    take one rank per copy; CIRCO's Recall@k counts only ``meta["target_img_id"]``.
    """
    task_copies = task.meta.get("copies") or {}
    expanded = {
        q.id: expand_copies(runs.get(q.id, []), q.meta.get("copies") or task_copies) for q in task.queries
    }
    positives = {q.id: list(q.positives) for q in task.queries}
    targets = {q.id: [q.meta["target_img_id"]] for q in task.queries if q.meta.get("target_img_id")}
    ks, map_ks = _ks(task, benchmark)
    return score_task(expanded, positives, ks, map_ks, recall_positives=targets)


def load_tasks(cfg: EvalConfig, progress: bool = False) -> list[TaskData]:
    """The benchmark's tasks as a run's settings ask for them (pool, instruction, reader options)."""
    reader_args = dict(cfg.reader_args)
    if registry.get_spec(cfg.benchmark).pool_options:
        reader_args.update(pool=cfg.pool, progress=progress, instruction=cfg.instruction)
    return registry.load_benchmark(
        cfg.benchmark,
        data_root=cfg.data_root,
        tasks=cfg.tasks,
        split=cfg.split,
        limit=cfg.limit,
        **reader_args,
    )


def evaluate(
    cfg: EvalConfig, out: str | os.PathLike, progress: bool = True, engine: Engine | None = None
) -> tuple[Path, dict[str, Any]]:
    """Run the evaluation; return the result folder and the summary.

    ``engine``: an engine to rerank with instead of building one from ``cfg`` (not closed here);
    ``cfg.reranker`` must still name its checkpoint, which identifies the results.
    """
    cfg.check()
    if engine is not None and not cfg.reranker:
        raise ValueError("evaluate(engine=...): set cfg.reranker to the engine's checkpoint")
    tasks = load_tasks(cfg, progress)
    out = result_dir(out, cfg)
    atomic_write_text(
        out / "config.json", json.dumps({"fingerprint": cfg.fingerprint(), **cfg.public_dict()}, indent=2)
    )
    ray_before = _ray_initialized() if cfg.ray_address is not None else True
    reranker = Reranker(cfg, engine)
    entries: dict[str, dict[str, Any]] = {}
    submissions: dict[str, str] = {}
    try:
        # Every task's first stage before any reranking: on Ray, the embedding actors are gone before
        # the reranking actors take the GPUs (or CPUs).
        staged = run_first_stages(tasks, cfg, out, progress)
        for task, fs in staged:
            fs_ids = {q.id: [d for d, _ in fs.get(q.id, [])] for q in task.queries}
            reranked, failures = final_rankings(task, fs, fs_ids, cfg, out, reranker, progress)
            if task.meta.get("submission_only"):
                submissions[task.name] = str(write_submission(task, reranked or fs_ids, cfg, out))
            else:
                entries[task.name] = score_entry(task, fs_ids, reranked, failures, cfg.benchmark)
    finally:
        reranker.close()
        if not ray_before:
            import ray

            ray.shutdown()
    summary = summarize(entries, {"fingerprint": cfg.fingerprint(), **cfg.public_dict()})
    if submissions:
        summary["submissions"] = submissions
    title = f"{cfg.benchmark}: {cfg.retriever} first stage" + (
        f", reranked by {cfg.reranker}" if cfg.reranker else ""
    )
    write_summary(out, summary, title)
    return out, summary


def run_first_stages(
    tasks: list[TaskData], cfg: EvalConfig, out: Path, progress: bool = True
) -> list[tuple[TaskData, dict[str, list[tuple[str, float]]]]]:
    """Each task repaired, its first stage run (or read back), its samples and first-stage run written;
    the embedders are released before returning."""
    embedders: dict[str, Any] = {}
    staged = []
    for task in tasks:
        loaded = task
        task = prepare_task(task, cfg.skip_missing)
        fs = first_stage_runs(task, cfg, out, embedders, progress, loaded)
        task = after_first_stage(task, cfg, out)
        samples_path = out / "samples" / f"{task.name}.jsonl"
        if not samples_path.is_file():
            write_samples(samples_path, (with_candidates(q, fs.get(q.id, []), task) for q in task.queries))
        write_trec(out / "runs" / f"{task.name}.first_stage.trec", fs, "first_stage")
        staged.append((task, fs))
    embedders.clear()
    return staged


def final_rankings(
    task: TaskData,
    fs: dict[str, list[tuple[str, float]]],
    fs_ids: dict[str, list[str]],
    cfg: EvalConfig,
    out: Path,
    reranker: Reranker,
    progress: bool = True,
) -> tuple[dict[str, list[str]] | None, dict[str, int] | None]:
    """The reranked rankings of a task (None without a reranker) and the engine's failures; the task's
    TREC run is written either way."""
    if not cfg.reranker:
        write_trec(out / "runs" / f"{task.name}.trec", fs, "first_stage")
        return None, None
    rr = rerank_task(task, fs, cfg, out, reranker, progress)
    failures = engine_failures(out / "results" / f"{task.name}.jsonl")
    warn_failures(task.name, failures)
    # Candidates past the reranked top-N keep their first-stage order behind it.
    reranked = {}
    for q in task.queries:
        head = rr.get(q.id, [])
        seen = set(head)
        reranked[q.id] = head + [d for d in fs_ids[q.id] if d not in seen]
    write_trec(
        out / "runs" / f"{task.name}.trec",
        {q: [(d, float(len(r) - i)) for i, d in enumerate(r)] for q, r in reranked.items()},
        Path(cfg.reranker).name,
    )
    return reranked, failures


def write_submission(task: TaskData, final: dict[str, list[str]], cfg: EvalConfig, out: Path) -> Path:
    """A task whose labels are private, written in its benchmark server's format."""
    spec = registry.spec_of_task(task.name, cfg.benchmark)
    if spec is None or spec.write_submission is None:
        raise ValueError(f"{task.name}: labels are private, and no submission format is known")
    sub = out / f"{task.name}_submission.json"
    spec.write_submission(sub, final, [q.id for q in task.queries])
    return sub


def score_entry(
    task: TaskData,
    fs_ids: dict[str, list[str]],
    reranked: dict[str, list[str]] | None,
    failures: dict[str, int] | None,
    benchmark: str,
) -> dict[str, Any]:
    """A task's entry of ``summary.json``: first-stage and reranked metrics, and the counts beside them."""
    fs_score = score_runs(task, fs_ids, benchmark)
    rr_score = score_runs(task, reranked, benchmark) if reranked is not None else None
    counts = {
        **task.issues,
        "no_positives": fs_score.n_no_positives,
        "empty_first_stage": sum(1 for q in task.queries if q.positives and not fs_ids[q.id]),
    }
    return task_entry(
        fs_score.n_scored,
        fs_score.metrics,
        rr_score.metrics if rr_score else None,
        task.metric or paper_metric(task.name),
        counts,
        failures,
    )


def _ray_initialized() -> bool:
    try:
        import ray
    except ImportError as e:
        raise ValueError("--ray-address needs Ray: pip install 'ray[default]'") from e
    return ray.is_initialized()
