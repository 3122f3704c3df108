"""The evaluation pipeline: benchmark -> first stage -> sliding-window reranking -> metrics -> tables.

A result folder holds::

    config.json                 the settings that define the results (a different setting = a new folder)
    first_stage/<task>.jsonl    {"qid", "ranked", "scores"}: the first-stage top-N per query
    first_stage/<task>.issues.json  precomputed lists: counts of lost entries (also in summary.json)
    samples/<task>.jsonl        each query with its top-N candidates (the viewer and data builders read it)
    results/<task>.jsonl        one line per reranked query, appended as queries finish (resume point)
    trajectories/<task>.jsonl   every episode of every window, for the viewer (images in trajectories/img/)
    runs/<task>.trec            TREC run of the final ranking (runs/<task>.first_stage.trec too)
    summary.json / .md / .csv   per-task metrics, first stage vs reranked, and the average
    <task>_submission.json      CIRCO test split only: the server's format (its labels are private)

The stages live in :mod:`vretrver.evaluation` (``config``, ``inputs``, ``first_stage``, ``reranker``,
``results``, ``run``); this module gathers their public names.

Resuming: the first stage of a task is saved once, atomically; reranked queries are appended as they
finish (continuous scheduling, in the order they finish) or chunk by chunk (``scheduler="rounds"``, and
Ray), trajectories first, then results, so an interrupted run reads back the finished queries, drops a
torn last line and the trajectories of queries whose result line never landed, and reranks the rest.
Settings that change results (retriever, checkpoint, profile, window, top-N, decoding, ...) are hashed
into ``config.json``; a run whose hash differs from the folder's writes to ``<out>-<hash>`` instead of
mixing results. Engine plumbing (engine arguments, chunk size, caches, Ray) is not hashed; the engine kind
is (greedy decoding in different engines can differ).

With ``ray_address`` the reranking is data parallel: one Ray actor per GPU (or ``ray_workers`` CPU actors)
holds an engine, chunks of queries go to the actors through Ray's ``ActorPool``, and the results come
back in query order and are appended exactly as in the serial path (image paths must be readable on
every node: a shared file system). The first stage of every task runs before any reranking, so the
embedding actors have released their GPUs before the reranking actors ask for them.

Per-query restrictions the benchmark readers put in ``Sample.meta`` are honoured: ``candidate_modality``
and ``gallery`` by the first stage itself, ``exclude`` (ids a query must never return, e.g. the earlier
images of a VIST story) by the first stage here, which fetches deeper and filters.
"""

from vretrver.evaluation.config import EvalConfig, result_dir
from vretrver.evaluation.files import append_lines, read_rows
from vretrver.evaluation.first_stage import after_first_stage, depth_of, first_stage_runs, precomputed_path
from vretrver.evaluation.inputs import (
    MissingImagesError,
    check_images,
    dedupe_queries,
    drop_empty_queries,
    exclusions,
    prepare_task,
)
from vretrver.evaluation.reranker import (
    Reranker,
    RerankWorker,
    make_reranker_engine,
    query_rows,
    rerank_config,
    rerank_rows,
    reranker_model,
)
from vretrver.evaluation.results import engine_failures, load_finished, rerank_task, with_candidates
from vretrver.evaluation.run import evaluate, load_tasks, run_first_stages, score_entry, score_runs

__all__ = [
    "EvalConfig",
    "MissingImagesError",
    "RerankWorker",
    "Reranker",
    "after_first_stage",
    "append_lines",
    "check_images",
    "dedupe_queries",
    "depth_of",
    "drop_empty_queries",
    "engine_failures",
    "evaluate",
    "exclusions",
    "first_stage_runs",
    "load_finished",
    "load_tasks",
    "make_reranker_engine",
    "precomputed_path",
    "prepare_task",
    "query_rows",
    "read_rows",
    "rerank_config",
    "rerank_rows",
    "rerank_task",
    "reranker_model",
    "result_dir",
    "run_first_stages",
    "score_entry",
    "score_runs",
    "with_candidates",
]
