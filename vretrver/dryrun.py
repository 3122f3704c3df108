"""``vretrver eval --dry-run``: what a run would cost, before any model is loaded.

Per task and in total: queries, windows (= episodes), model calls (an upper bound: each window may make
up to its tool budget of calls, then answers), images to decode (once per query: the query's images and
its top-N candidates' images, shared by the overlapping windows), and the wall time at a rate of
episodes per second.

The benchmark reader runs (it lists the queries and the pool). With a precomputed first stage the lists
are read and filtered as the run would; otherwise every query is assumed to get a full top-N list (as
many candidates as the pool allows) and the images are those of an average pool candidate, which the
table says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vretrver.evaluation.config import EvalConfig
    from vretrver.samples import TaskData

# Episodes per second assumed when --rate is not given. Not a measurement: an estimate for a 7B
# Qwen2.5-VL reranker in bf16 on one H200 with vLLM. An episode reads about 8k prompt tokens (21 images
# of about 330 tokens each, plus text) and writes about 450 tokens over 1.5 turns; at about 15k prefill
# tokens/s and 4k decode tokens/s (batch 64) prefill bounds it at about 2 episodes/s.
ASSUMED_RATE = 2.0


@dataclass
class TaskPlan:
    task: str
    queries: int
    lists_known: bool  # False: full top-N lists assumed
    episodes: int
    max_calls: int
    images: float  # image files decoded (once per query)

    def seconds(self, rate: float) -> float:
        return self.episodes / rate


def _windows(n: int, cfg: EvalConfig) -> int:
    from vretrver.rerank import official_window_applies, official_window_starts, window_starts

    if n <= 0:
        return 0
    top_n = cfg.resolved_top_n()
    n = min(n, top_n)
    if cfg.window_mode == "official":
        return sum(
            official_window_applies(s, cfg.resolved_window(), n)
            for s in official_window_starts(top_n, cfg.resolved_window(), cfg.stride)
        )
    return len(window_starts(n, cfg.resolved_window(), cfg.stride))


def plan_task(task: TaskData, cfg: EvalConfig) -> TaskPlan:
    """The counts of one task (queries deduplicated and empty ones dropped, as the run does)."""
    from vretrver.evaluation.first_stage import precomputed_path
    from vretrver.evaluation.inputs import dedupe_queries, drop_empty_queries
    from vretrver.protocol import load_profile

    task = drop_empty_queries(dedupe_queries(task))
    top_n = cfg.resolved_top_n()
    budget = (
        cfg.max_tool_calls if cfg.max_tool_calls is not None else load_profile(cfg.profile).max_tool_calls
    )
    episodes = images = 0.0
    known = cfg.retriever.startswith("precomputed:")
    if known:
        from vretrver.retrieval.precomputed import read_candidates
        from vretrver.retrieval.search import first_stage

        lists, _ = read_candidates(precomputed_path(cfg, task), task, is_other_query=lambda q: True)
        runs = first_stage(task, cfg.retriever, top_n=top_n, precomputed=lists)
        for q in task.queries:
            head = [task.pool[d] for d, _ in runs.get(q.id, [])[:top_n] if d in task.pool]
            w = _windows(len(head), cfg)
            episodes += w
            if w:
                images += len(set(q.query.images) | {c.image for c in head if c.image})
    else:
        n = min(top_n, len(task.pool))
        with_image = sum(1 for c in task.pool.values() if c.image) / max(1, len(task.pool))
        w = _windows(n, cfg)
        episodes = w * len(task.queries)
        if w:
            images = sum(len(q.query.images) for q in task.queries) + n * with_image * len(task.queries)
    return TaskPlan(task.name, len(task.queries), known, int(episodes), int(episodes) * (budget + 1), images)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def dry_run(cfg: EvalConfig, rate: float | None = None, progress: bool = False) -> str:
    """The table of a run's size and estimated time, as text (nothing is written, no model loaded)."""
    from vretrver.evaluation.run import load_tasks

    cfg.check()
    if rate is not None and not rate > 0:
        raise ValueError(f"--rate must be > 0 episodes/s, got {rate}")
    tasks = load_tasks(cfg, progress)
    plans = [plan_task(t, cfg) for t in tasks]
    r = rate if rate is not None else ASSUMED_RATE
    head = f"{'task':<28} {'queries':>9} {'windows':>10} {'model calls <=':>15} {'image decodes':>14} {'time':>9}"
    out = [head, "-" * len(head)]
    for p in plans:
        mark = "" if p.lists_known else " *"
        out.append(
            f"{p.task + mark:<28} {p.queries:>9,} {p.episodes:>10,} {p.max_calls:>15,} {p.images:>14,.0f} "
            f"{_duration(p.seconds(r)):>9}"
        )
    total = TaskPlan(
        "total",
        sum(p.queries for p in plans),
        all(p.lists_known for p in plans),
        sum(p.episodes for p in plans),
        sum(p.max_calls for p in plans),
        sum(p.images for p in plans),
    )
    out.append("-" * len(head))
    out.append(
        f"{'total':<28} {total.queries:>9,} {total.episodes:>10,} {total.max_calls:>15,} {total.images:>14,.0f} "
        f"{_duration(total.seconds(r)):>9}"
    )
    from vretrver.protocol import load_profile

    budget = (
        cfg.max_tool_calls if cfg.max_tool_calls is not None else load_profile(cfg.profile).max_tool_calls
    )
    out.append(
        f"top-N {cfg.resolved_top_n()}, window {cfg.resolved_window()}, stride {cfg.stride} ({cfg.window_mode}); "
        f"model calls: each window up to {budget} tool call(s) and an answer."
    )
    if any(not p.lists_known for p in plans):
        out.append("* no first stage read: full top-N lists assumed (as many candidates as the pool has).")
    if rate is None:
        out.append(
            f"time at an assumed {ASSUMED_RATE:g} episodes/s (an estimate for a 7B reranker on one H200 with "
            "vLLM, not a measurement); pass --rate with the rate measured on your hardware."
        )
    else:
        out.append(f"time at {rate:g} episodes/s (--rate), one engine; data-parallel engines divide it.")
    if not cfg.reranker:
        out.append("no --reranker: the counts are those reranking would take.")
    return "\n".join(out)
