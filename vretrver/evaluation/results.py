"""A task's reranking, appended as queries finish, and what an interrupted run finds on resume.

Continuous scheduling (without Ray) saves each query as it finishes, in any order; round-synchronous
scheduling and Ray save chunk by chunk, in query order. Trajectories are written first, then results, so
a query counts as done only once both are on disk.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from vretrver.evaluation.files import append_lines, read_rows
from vretrver.evaluation.reranker import Reranker
from vretrver.jsonl import read_appended
from vretrver.samples import Sample, TaskData, write_jsonl

if TYPE_CHECKING:
    from vretrver.evaluation.config import EvalConfig


def load_finished(
    res_path: Path, traj_path: Path, qids: set[str], retry_failed: bool = True
) -> dict[str, list[str]]:
    """Finished queries of an earlier run, after repairing what an interruption or damage left.

    A damaged line is dropped on its own (and reported); a torn last line is cut off; a query listed
    twice keeps its first line. With ``retry_failed`` a query whose engine failed in any window is not
    finished. Trajectories of unfinished queries are removed, as those queries will be reranked again.
    """
    rows, intact = read_rows(res_path, "; its query is reranked again")
    done: dict[str, list[str]] = {}
    seen: set[str] = set()
    clean = []
    retried = 0
    for r in rows:
        qid, ranked = r.get("qid"), r.get("reranked")
        if not isinstance(qid, str) or not isinstance(ranked, list) or qid in seen or qid not in qids:
            continue
        seen.add(qid)
        if retry_failed and r.get("failed"):
            retried += 1
            continue
        done[qid] = ranked
        clean.append(r)
    if res_path.is_file() and (len(clean) != len(rows) or not intact):
        write_jsonl(res_path, clean)
    if retried:
        print(
            f"[eval] {res_path}: reranking again {retried} queries the engine failed on "
            "(--no-retry-failed keeps them)",
            file=sys.stderr,
        )
    if traj_path.is_file():
        trajs, traj_intact = read_rows(traj_path, "; that window is missing from the viewer")
        kept = [t for t in trajs if t.get("qid") in done]
        if len(kept) != len(trajs) or not traj_intact:
            write_jsonl(traj_path, kept)
    return done


def engine_failures(res_path: Path) -> dict[str, int]:
    """What the engine failed on, from a task's results file: episodes (windows) and their queries.

    ``fallback_queries`` lost every window, so they keep their first-stage order; the other failed
    queries lost some windows.
    """
    rows = read_appended(res_path).rows
    episodes = [len(r.get("answered") or []) for r in rows]
    failed = [len(r.get("failed") or []) for r in rows]
    return {
        "reranked_queries": len(rows),
        "episodes": sum(episodes),
        "failed_episodes": sum(failed),
        "failed_queries": sum(1 for f in failed if f),
        "fallback_queries": sum(1 for f, n in zip(failed, episodes, strict=True) if f and f >= n),
    }


def rerank_task(
    task: TaskData,
    fs_runs: dict[str, list[tuple[str, float]]],
    cfg: EvalConfig,
    out: Path,
    reranker: Reranker,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Rerank every query's top-N in windows; append results as queries (or chunks) finish; resume from
    the file.

    Continuous scheduling (without Ray) reads the queries lazily and saves each as it finishes, in any
    order; round-synchronous scheduling and Ray save chunk by chunk, in query order.
    """
    res_path = out / "results" / f"{task.name}.jsonl"
    traj_path = out / "trajectories" / f"{task.name}.jsonl"
    done = load_finished(res_path, traj_path, {q.id for q in task.queries}, cfg.retry_failed)
    n_todo = sum(1 for q in task.queries if q.id not in done and fs_runs.get(q.id))
    if not n_todo:
        return done
    res_path.parent.mkdir(parents=True, exist_ok=True)
    traj_path.parent.mkdir(parents=True, exist_ok=True)
    n_ready = sum(1 for q in task.queries if fs_runs.get(q.id))
    todo = (
        with_candidates(q, fs_runs[q.id], task)
        for q in task.queries
        if q.id not in done and fs_runs.get(q.id)
    )
    image_dir = out / "trajectories" / "img"
    with tqdm(
        total=n_ready, initial=n_ready - n_todo, desc=f"rerank {task.name}", disable=not progress
    ) as bar:

        def save(rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
            # Trajectories first, then results: a query counts as done only once both are on disk.
            append_lines(traj_path, [t for _, trajs in rows for t in trajs])
            append_lines(res_path, [r for r, _ in rows])
            for r, _ in rows:
                done[r["qid"]] = r["reranked"]
            bar.update(len(rows))

        if reranker.streams():
            reranker.stream(todo, image_dir, save)
            return done
        chunks = [list(c) for c in _batched(todo, cfg.chunk_queries)]
        for chunk, rows in zip(chunks, reranker.map(chunks, image_dir)):
            if [r["qid"] for r, _ in rows] != [s.id for s in chunk]:
                raise RuntimeError(f"{task.name}: reranked rows came back out of order")
            save(rows)
    return done


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def warn_failures(task: str, f: dict[str, int]) -> None:
    if f["failed_episodes"]:
        print(
            f"[eval] {task}: the engine failed {f['failed_episodes']} of {f['episodes']} episodes; "
            f"{f['failed_queries']} of {f['reranked_queries']} queries kept first-stage order in those "
            "windows. Run the same command again to retry them.",
            file=sys.stderr,
        )


def with_candidates(q: Sample, ranked: list[tuple[str, float]], task: TaskData) -> Sample:
    return replace(
        q, candidates=[task.pool[d] for d, _ in ranked if d in task.pool], task=q.task or task.name
    )
