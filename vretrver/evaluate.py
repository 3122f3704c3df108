"""The evaluation pipeline: benchmark -> first stage -> sliding-window reranking -> metrics -> tables.

A result folder holds::

    config.json                 the settings that define the results (a different setting = a new folder)
    first_stage/<task>.jsonl    {"qid", "ranked", "scores"}: the first-stage top-N per query
    results/<task>.jsonl        one line per reranked query, appended as queries finish (resume point)
    trajectories/<task>.jsonl   every episode of every window, for the viewer (images in trajectories/img/)
    runs/<task>.trec            TREC run of the final ranking (runs/<task>.first_stage.trec too)
    summary.json / .md / .csv   per-task metrics, first stage vs reranked, and the average

An interrupted run resumes where it stopped: finished queries are read back, the rest are reranked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vretrver.engines.base import GenerationConfig
from vretrver.metrics import paper_metric, score_task
from vretrver.report.tables import summarize, task_entry, write_summary, write_trec
from vretrver.samples import Sample, TaskData, atomic_write_text

ZERO_SHOT = ("circo", "genecis", "visdial", "vist", "mtfiq")


@dataclass
class EvalConfig:
    benchmark: str
    tasks: list[str] | None = None
    data_root: str | None = None
    split: str | None = None
    limit: int | None = None
    retriever: str = "offline"  # offline | lamra[:MODEL] | precomputed:PATH | hash[:DIM]
    reranker: str | None = None  # a checkpoint folder / hub id, "tiny", or None for first stage only
    engine: str = "hf"  # hf | vllm | openai
    engine_args: dict[str, Any] = field(default_factory=dict)
    profile: str = "v-retrver"
    top_n: int | None = None  # default: 50 for M-BEIR-style tasks, 10 for the zero-shot sets
    window: int = 20
    stride: int = 10
    max_tool_calls: int | None = None
    temperature: float = 0.0
    max_new_tokens: int = 1024
    seed: int | None = 0
    index: str = "flat"
    chunk_queries: int = 32  # queries reranked (and saved) together
    skip_missing: bool = False
    cache_dir: str | None = None

    def resolved_top_n(self) -> int:
        if self.top_n is not None:
            return self.top_n
        return 10 if self.benchmark in ZERO_SHOT else 50

    def fingerprint(self) -> str:
        """Hash of every setting that changes results (not engine plumbing, caches or chunk sizes)."""
        keep = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("engine", "engine_args", "chunk_queries", "cache_dir", "skip_missing")
        }
        keep["top_n"] = self.resolved_top_n()
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


class MissingImagesError(FileNotFoundError):
    pass


def result_dir(out: str | os.PathLike, cfg: EvalConfig) -> Path:
    """``out`` itself if it is new or holds results of the same settings; else a sibling for these settings."""
    out = Path(out)
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            old = None
        if old != cfg.fingerprint():
            out = out.with_name(f"{out.name}-{cfg.fingerprint()}")
            print(f"[eval] settings differ from {cfg_file}; writing to {out}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------ input checks


def _images_of(task: TaskData) -> Iterator[str]:
    for q in task.queries:
        yield from q.query.images
    for c in task.pool.values():
        if c.image:
            yield c.image


def check_images(task: TaskData, skip_missing: bool) -> TaskData:
    """Fail listing missing image files, or (skip_missing) drop what needs them and count it."""
    missing = {p for p in set(_images_of(task)) if not os.path.exists(p)}
    if not missing:
        return task
    if not skip_missing:
        first = sorted(missing)[:5]
        raise MissingImagesError(
            f"{task.name}: {len(missing)} image files are missing, e.g. {first}; "
            "check --data-root, or pass --skip-missing to score the rest"
        )
    pool = {d: c for d, c in task.pool.items() if not (c.image and c.image in missing)}
    queries = [q for q in task.queries if not any(p in missing for p in q.query.images)]
    issues = dict(task.issues)
    issues["missing_image_candidates"] = len(task.pool) - len(pool)
    issues["missing_image_queries"] = len(task.queries) - len(queries)
    return replace(task, pool=pool, queries=queries, issues=issues)


def drop_empty_queries(task: TaskData) -> TaskData:
    queries = [q for q in task.queries if q.query.text or q.query.images]
    if len(queries) == len(task.queries):
        return task
    issues = {**task.issues, "empty_queries": task.issues.get("empty_queries", 0) + len(task.queries) - len(queries)}
    return replace(task, queries=queries, issues=issues)


# ------------------------------------------------------------------ first stage


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a jsonl we append to; a torn last line (an interrupted write) is ignored."""
    rows = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def first_stage_runs(
    task: TaskData, cfg: EvalConfig, out: Path, embedder_cache: dict[str, Any]
) -> dict[str, list[tuple[str, float]]]:
    path = out / "first_stage" / f"{task.name}.jsonl"
    if path.is_file():
        return {r["qid"]: list(zip(r["ranked"], r["scores"])) for r in _read_jsonl(path)}
    top_n = cfg.resolved_top_n()
    if cfg.retriever.startswith("precomputed:"):
        from vretrver.retrieval.precomputed import load_precomputed

        runs = load_precomputed(cfg.retriever.split(":", 1)[1], task, top_n=top_n)
    else:
        from vretrver.retrieval.base import make_embedder
        from vretrver.retrieval.search import first_stage

        if cfg.retriever not in embedder_cache:
            embedder_cache[cfg.retriever] = make_embedder(cfg.retriever)
        cache = cfg.cache_dir or str(out / "cache")
        runs = first_stage(task, embedder_cache[cfg.retriever], top_n=top_n, cache_dir=cache, index=cfg.index)
    from vretrver.samples import write_jsonl

    write_jsonl(
        path,
        (
            {"qid": q, "ranked": [d for d, _ in r], "scores": [float(s) for _, s in r]}
            for q, r in runs.items()
        ),
    )
    return runs


# ------------------------------------------------------------------ reranking


def make_reranker_engine(cfg: EvalConfig):
    from vretrver.engines.factory import make_engine

    model = cfg.reranker
    if model == "tiny":
        from vretrver.testing.tiny_models import tiny_model_path

        model = str(tiny_model_path("qwen2_5_vl"))
    return make_engine(cfg.engine, model, **cfg.engine_args)


def rerank_task(
    task: TaskData,
    fs_runs: dict[str, list[tuple[str, float]]],
    cfg: EvalConfig,
    out: Path,
    engine_holder: dict[str, Any],
    progress: bool = True,
) -> dict[str, list[str]]:
    """Rerank every query's top-N in windows; append results as chunks finish; resume from the file."""
    from vretrver.rerank import RerankConfig, rerank_windows

    res_path = out / "results" / f"{task.name}.jsonl"
    traj_path = out / "trajectories" / f"{task.name}.jsonl"
    done = {r["qid"]: r["reranked"] for r in _read_jsonl(res_path)}
    todo = [q for q in task.queries if q.id not in done and fs_runs.get(q.id)]
    if not todo:
        return done
    if "engine" not in engine_holder:
        engine_holder["engine"] = make_reranker_engine(cfg)
    engine = engine_holder["engine"]
    rcfg = RerankConfig(
        profile=cfg.profile,
        max_tool_calls=cfg.max_tool_calls,
        window=cfg.window,
        stride=cfg.stride,
        top_n=cfg.resolved_top_n(),
        generation=GenerationConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed, stop=_stops(cfg.profile)
        ),
    )
    res_path.parent.mkdir(parents=True, exist_ok=True)
    traj_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(task.queries), initial=len(task.queries) - len(todo), desc=f"rerank {task.name}", disable=not progress)
    for i in range(0, len(todo), cfg.chunk_queries):
        chunk = todo[i : i + cfg.chunk_queries]
        samples = [_with_candidates(q, fs_runs[q.id], task) for q in chunk]
        results = rerank_windows(samples, engine, rcfg)
        # Trajectories first, then results: a query counts as done only once both are on disk.
        with open(traj_path, "a", encoding="utf-8") as tf:
            for r in results:
                for w, ep in enumerate(r.episodes):
                    rec = ep.to_record(out / "trajectories" / "img")
                    rec.update(qid=r.sample_id, window=w, window_start=ep.sample.meta.get("window_start", 0))
                    rec["candidate_ids"] = [c.id for c in ep.sample.candidates]
                    tf.write(json.dumps(rec, ensure_ascii=False) + "\n")
        with open(res_path, "a", encoding="utf-8") as rf:
            for r in results:
                row = {
                    "qid": r.sample_id,
                    "first_stage": [d for d, _ in fs_runs[r.sample_id]],
                    "reranked": r.ranked_ids,
                    "n_valid_calls": [e.n_valid_calls for e in r.episodes],
                    "n_invalid_calls": [e.n_invalid_calls for e in r.episodes],
                    "answered": [e.answered for e in r.episodes],
                    "failed": [e.failed for e in r.episodes if e.failed],
                }
                rf.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[r.sample_id] = r.ranked_ids
        bar.update(len(chunk))
    bar.close()
    return done


def _stops(profile: str) -> list[str]:
    from vretrver.protocol import load_profile

    return list(load_profile(profile).stop)


def _with_candidates(q: Sample, ranked: list[tuple[str, float]], task: TaskData) -> Sample:
    return replace(q, candidates=[task.pool[d] for d, _ in ranked if d in task.pool], task=q.task or task.name)


# ------------------------------------------------------------------ the whole run


def _ks(task: TaskData, benchmark: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if benchmark == "genecis" or task.name.startswith("genecis"):
        return (1, 2, 3), ()
    if benchmark == "circo" or task.name.startswith("circo"):
        return (1, 5, 10), (5, 10, 25, 50)
    return (1, 5, 10), ()


def evaluate(cfg: EvalConfig, out: str | os.PathLike, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Run the evaluation; return the result folder and the summary."""
    from vretrver.benchmarks.registry import load_benchmark

    out = result_dir(out, cfg)
    atomic_write_text(out / "config.json", json.dumps({"fingerprint": cfg.fingerprint(), **asdict(cfg)}, indent=2))
    tasks = load_benchmark(cfg.benchmark, data_root=cfg.data_root, tasks=cfg.tasks, split=cfg.split, limit=cfg.limit)
    embedders: dict[str, Any] = {}
    engine_holder: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    run_name = Path(cfg.reranker).name if cfg.reranker else "first_stage"
    try:
        for task in tasks:
            task = check_images(drop_empty_queries(task), cfg.skip_missing)
            fs = first_stage_runs(task, cfg, out, embedders)
            positives = {q.id: list(q.positives) for q in task.queries}
            ks, map_ks = _ks(task, cfg.benchmark)
            metric = task.metric or paper_metric(task.name)
            fs_ids = {q: [d for d, _ in r] for q, r in fs.items()}
            write_trec(out / "runs" / f"{task.name}.first_stage.trec", fs, "first_stage")
            reranked = None
            if cfg.reranker:
                rr = rerank_task(task, fs, cfg, out, engine_holder, progress)
                # Candidates past the reranked top-N keep their first-stage order behind it.
                reranked = {q: rr[q] + [d for d in fs_ids[q] if d not in set(rr[q])] for q in rr}
                write_trec(
                    out / "runs" / f"{task.name}.trec",
                    {q: [(d, float(len(r) - i)) for i, d in enumerate(r)] for q, r in reranked.items()},
                    run_name,
                )
            else:
                write_trec(out / "runs" / f"{task.name}.trec", fs, "first_stage")
            if task.meta.get("submission_only"):
                from vretrver.benchmarks.zeroshot import write_circo_submission

                write_circo_submission(out / f"{task.name}_submission.json", reranked or fs_ids)
                continue
            fs_score = score_task(fs_ids, positives, ks, map_ks)
            rr_score = score_task(reranked, positives, ks, map_ks) if reranked is not None else None
            counts = {
                **task.issues,
                "no_positives": fs_score.n_no_positives,
                "no_first_stage_result": fs_score.n_missing_run,
            }
            entries[task.name] = task_entry(
                fs_score.n_scored, fs_score.metrics, rr_score.metrics if rr_score else None, metric, counts
            )
    finally:
        eng = engine_holder.get("engine")
        if eng is not None and hasattr(eng, "close"):
            eng.close()
    summary = summarize(entries, {"fingerprint": cfg.fingerprint(), **asdict(cfg)})
    title = f"{cfg.benchmark}: {cfg.retriever} first stage" + (f", reranked by {cfg.reranker}" if cfg.reranker else "")
    write_summary(out, summary, title)
    return out, summary
