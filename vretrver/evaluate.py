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

Resuming: the first stage of a task is saved once, atomically; reranked queries are appended as they
finish (continuous scheduling, in the order they finish) or chunk by chunk (``scheduler="rounds"``, and
Ray), trajectories first, then results, so an interrupted run reads back the finished queries, drops a
torn last line and the trajectories of queries whose result line never landed, and reranks the rest.
Settings that change results (retriever, checkpoint, profile, window, top-N, decoding, ...) are hashed
into ``config.json``; a run whose hash differs from the folder's writes to ``<out>-<hash>`` instead of
mixing results. Engine plumbing (engine kind and its arguments, chunk size, caches, Ray) is not hashed.

With ``ray_address`` the reranking is data parallel: one Ray actor per GPU (or ``ray_workers`` CPU actors)
holds an engine, chunks of queries go to the actors through Ray's ``ActorPool``, and the results come
back in query order and are appended exactly as in the serial path (image paths must be readable on
every node: a shared file system). The first stage of every task runs before any reranking, so the
embedding actors have released their GPUs before the reranking actors ask for them.

Per-query restrictions the benchmark readers put in ``Sample.meta`` are honoured: ``candidate_modality``
and ``gallery`` by the first stage itself, ``exclude`` (ids a query must never return, e.g. the earlier
images of a VIST story) here, by fetching deeper and filtering.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from vretrver.benchmarks import registry
from vretrver.benchmarks.registry import find_spec
from vretrver.engines.base import Engine, GenerationConfig
from vretrver.images import check_readable
from vretrver.jsonl import dumps_line, read_appended
from vretrver.metrics import TaskScore, expand_copies, paper_metric, score_task
from vretrver.report.tables import summarize, task_entry, write_summary, write_trec
from vretrver.samples import Sample, SampleError, TaskData, atomic_write_text, write_jsonl, write_samples

if TYPE_CHECKING:
    from vretrver.rerank import RerankConfig, WindowedResult

# Settings that do not change results: left out of the fingerprint.
_PLUMBING = (
    "engine_args",
    "chunk_queries",
    "cache_dir",
    "tasks",
    "ray_address",
    "ray_workers",
    "retry_failed",  # what a resumed run does with failed queries, not how a query is reranked
    "max_unresolved",  # only decides whether a run with lost first-stage entries goes on
    "scheduler",  # the order episodes reach the engine, not what each one sees
    "max_inflight",
)
# The engine kind counts: greedy decoding in different engines (and dtypes) can differ.
_RERANK_SETTINGS = (
    "engine",
    "profile",
    "window",
    "stride",
    "max_tool_calls",
    "temperature",
    "max_new_tokens",
    "seed",
    "window_mode",
    "parquet_prompts",
)
_SECRET_WORDS = ("key", "token", "secret", "password")


@dataclass
class EvalConfig:
    benchmark: str
    tasks: list[str] | None = None
    data_root: str | None = None
    split: str | None = None
    limit: int | None = None
    # M-BEIR: each task's local pool; "global", the union pool (modality-filtered); "lamra-global",
    # LamRA's 16 local pools concatenated (copies kept, no modality filter)
    pool: str = "local"
    instruction: str = "first"  # M-BEIR: the first instruction of the task, or "random[:SEED]" per query
    # Keyword arguments for the benchmark's reader (registry.reader_arguments), e.g. {"image_dir": ...}
    reader_args: dict[str, Any] = field(default_factory=dict)
    # offline | lamra[:MODEL] | hash[:DIM] | precomputed:PATH (PATH may contain {task})
    retriever: str = "offline"
    # precomputed: first-stage entries that may be lost (unmatched hits, unknown ids) before the run stops
    max_unresolved: int = 0
    parquet_prompts: bool = False  # precomputed parquet: each query's prompt from the file (meta)
    reranker: str | None = None  # a checkpoint folder / hub id, "tiny", or None for first stage only
    engine: str = "hf"  # hf | vllm | openai
    engine_args: dict[str, Any] = field(default_factory=dict)
    profile: str = "v-retrver"
    top_n: int | None = (
        None  # default: the benchmark's (50 for M-BEIR-style tasks, 10 for the zero-shot sets)
    )
    window: int | None = None  # default: the benchmark's (20)
    stride: int = 10
    window_mode: str = "ours"  # ours | official: the release's fixed windows and answer rules (rerank.py)
    max_tool_calls: int | None = None
    temperature: float = 0.0
    max_new_tokens: int = 1024
    seed: int | None = 0
    index: str = "flat"
    chunk_queries: int = 32  # rounds (and Ray): queries reranked (and saved) together; one Ray task each
    # continuous: each query and episode advances on its own, results saved as queries finish;
    # rounds: one engine call per round of a chunk of queries (vretrver.scheduler)
    scheduler: str = "continuous"
    max_inflight: int = 64  # continuous: episodes in the engine at once
    skip_missing: bool = False
    cache_dir: str | None = None
    ray_address: str | None = None  # "local", "auto" or a cluster address: data-parallel reranking
    ray_workers: int | None = None  # actors (default: one per GPU; without GPUs, the cluster's CPUs, <= 8)
    retry_failed: bool = True  # on resume, rerank again the queries the engine failed on

    def resolved_top_n(self) -> int:
        if self.top_n is not None:
            return self.top_n
        spec = find_spec(self.benchmark)
        return spec.top_n if spec is not None else 50

    def resolved_window(self) -> int:
        if self.window is not None:
            return self.window
        spec = find_spec(self.benchmark)
        return spec.window if spec is not None else 20

    def fingerprint(self) -> str:
        """Hash of every setting that changes results (not engine plumbing, caches or chunk sizes)."""
        keep = {k: v for k, v in asdict(self).items() if k not in _PLUMBING}
        keep["top_n"] = self.resolved_top_n()
        keep["window"] = self.resolved_window()
        # Settings added later enter the hash only when set, so earlier result folders keep theirs.
        for k, default in (
            ("instruction", "first"),
            ("reader_args", {}),
            ("window_mode", "ours"),
            ("parquet_prompts", False),
        ):
            if keep[k] == default:
                keep.pop(k)
        if not self.reranker:
            # First stage only: the reranking settings cannot change anything.
            for k in _RERANK_SETTINGS:
                keep.pop(k, None)
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]

    def check(self) -> None:
        """Reject settings that cannot work before anything is loaded."""
        if self.resolved_window() < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        for name in ("stride", "chunk_queries", "max_new_tokens", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top-n must be >= 1, got {self.top_n}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise ValueError(f"ray-workers must be >= 1, got {self.ray_workers}")
        pool_benchmarks = registry.pool_benchmarks()
        if self.pool != "local" and (
            self.benchmark not in pool_benchmarks or self.pool not in ("global", "lamra-global")
        ):
            raise ValueError(
                f"pool must be 'local' or, for {' / '.join(pool_benchmarks)}, 'global' or 'lamra-global';"
                f" got {self.pool!r}"
            )
        if self.instruction != "first":
            if self.benchmark not in pool_benchmarks:
                raise ValueError(
                    f"--instruction applies to {' / '.join(pool_benchmarks)} (the zero-shot sets have one"
                    f" instruction each); got {self.instruction!r} for {self.benchmark}"
                )
            from vretrver.benchmarks.mbeir import instruction_picker

            instruction_picker(self.instruction)
        own = {"pool": "--pool", "instruction": "--instruction", "progress": "--quiet"}
        clash = [k for k in self.reader_args if k in own and self.benchmark in pool_benchmarks]
        if clash:
            raise ValueError(f"--reader-args: set {clash[0]!r} with {own[clash[0]]}, not here")
        if self.reader_args:  # in-memory tasks (the single-query command) have no reader
            registry.check_reader_args(self.benchmark, self.reader_args)
        if self.retriever.startswith("precomputed:") and not self.retriever.split(":", 1)[1]:
            raise ValueError("--retriever precomputed:PATH needs a path")
        from vretrver.rerank import SCHEDULERS, WINDOW_MODES

        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")

        if self.window_mode not in WINDOW_MODES:
            raise ValueError(
                f"window-mode must be one of {', '.join(WINDOW_MODES)}, got {self.window_mode!r}"
            )
        if self.max_unresolved < 0:
            raise ValueError(f"max-unresolved must be >= 0, got {self.max_unresolved}")
        if self.parquet_prompts and not (
            self.retriever.startswith("precomputed:") and self.retriever.lower().endswith(".parquet")
        ):
            raise ValueError(
                "--parquet-prompts needs --retriever precomputed:PATH.parquet (the prompts' source)"
            )
        if self.reranker:
            from vretrver.protocol import load_profile

            prof = load_profile(self.profile)  # an unknown profile fails now, not after the first stage
            if self.parquet_prompts and not prof.settings.get("parquet_prompt"):
                raise ValueError(
                    f"--parquet-prompts: profile {prof.name!r} builds its own prompts and would ignore the "
                    "parquet's; use --profile official (the release's layout)"
                )

    def public_dict(self) -> dict[str, Any]:
        """The settings as written to config.json and summary.json (secrets in engine_args masked)."""
        d = asdict(self)
        d["window"] = self.resolved_window()
        d["engine_args"] = {
            k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v)
            for k, v in self.engine_args.items()
        }
        return d


class MissingImagesError(FileNotFoundError):
    """Image files named by the benchmark are not on disk."""


def result_dir(out: str | os.PathLike, cfg: EvalConfig) -> Path:
    """``out`` itself if it is new or holds results of the same settings; else a sibling for these settings."""
    out = Path(out)
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text()).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            old = None
        if old != cfg.fingerprint():
            out = out.with_name(f"{out.name}-{cfg.fingerprint()}")
            print(f"[eval] settings differ from {cfg_file}; writing to {out}", file=sys.stderr)
    elif out.is_dir() and any((out / d).exists() for d in ("first_stage", "results")):
        raise ValueError(f"{out} holds results but no config.json; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------ input checks


def _add(issues: dict[str, int], key: str, n: int) -> dict[str, int]:
    return {**issues, key: issues.get(key, 0) + n} if n else issues


def dedupe_queries(task: TaskData) -> TaskData:
    """Keep the first query of each id (a second copy would be scored twice); count the rest."""
    seen: set[str] = set()
    queries = []
    for q in task.queries:
        if q.id not in seen:
            seen.add(q.id)
            queries.append(q)
    if len(queries) == len(task.queries):
        return task
    return replace(
        task, queries=queries, issues=_add(task.issues, "duplicate_qids", len(task.queries) - len(queries))
    )


def drop_empty_queries(task: TaskData) -> TaskData:
    """Queries with neither text nor image cannot be embedded or shown: drop and count them."""
    queries = [q for q in task.queries if q.query.text or q.query.images]
    if len(queries) == len(task.queries):
        return task
    return replace(
        task, queries=queries, issues=_add(task.issues, "empty_queries", len(task.queries) - len(queries))
    )


def _images_of(task: TaskData) -> Iterator[str]:
    for q in task.queries:
        yield from q.query.images
    for c in task.pool.values():
        if c.image:
            yield c.image


def check_images(task: TaskData, skip_missing: bool) -> TaskData:
    """Fail listing missing image files, or (skip_missing) drop what needs them and count it.

    With ``skip_missing`` an image that exists but does not open is skipped and counted too; without it,
    such a file stops the first stage (or, with precomputed candidates, fails its query) naming the file.
    """
    missing = {p for p in set(_images_of(task)) if not os.path.exists(p)}
    if not missing and not skip_missing:
        return task
    first = sorted(missing)[:5]
    if not skip_missing:
        raise MissingImagesError(
            f"{task.name}: {len(missing)} image files are missing (first {len(first)}: {', '.join(first)}); "
            "check --data-root, or pass --skip-missing to score the rest"
        )
    # Files that are there but do not open (not an image, above the size limit) are skipped alike; only
    # their headers are read (about 0.1 ms a file), and only when skipping was asked for.
    unreadable = {p: why for p in set(_images_of(task)) - missing if (why := check_readable(p))}
    missing |= set(unreadable)
    pool = {d: c for d, c in task.pool.items() if not (c.image and c.image in missing)}
    queries = [q for q in task.queries if not any(p in missing for p in q.query.images)]
    issues = _add(task.issues, "missing_image_files", len(missing) - len(unreadable))
    issues = _add(issues, "unreadable_image_files", len(unreadable))
    issues = _add(issues, "missing_image_candidates", len(task.pool) - len(pool))
    issues = _add(issues, "missing_image_queries", len(task.queries) - len(queries))
    if missing:
        first = sorted(missing)[0]
        print(
            f"[eval] {task.name}: {len(missing) - len(unreadable)} image files are missing and "
            f"{len(unreadable)} do not open (first: {first}: {unreadable.get(first, 'missing')}); "
            f"skipped {len(task.queries) - len(queries)} queries and {len(task.pool) - len(pool)} candidates",
            file=sys.stderr,
        )
    return replace(task, pool=pool, queries=queries, issues=issues)


def _exclusions(task: TaskData) -> dict[str, set[str]]:
    out = {}
    for q in task.queries:
        ex = q.meta.get("exclude")
        if ex is None:
            continue
        if not isinstance(ex, list) or not all(isinstance(x, str) for x in ex):
            raise SampleError(
                f"{task.name}: query {q.id}: field 'meta.exclude': expected a list of candidate ids"
            )
        if ex:
            out[q.id] = set(ex)
    return out


def prepare_task(task: TaskData, skip_missing: bool = False) -> TaskData:
    """Drop what cannot be scored (counted in ``issues``) and count what will score 0."""
    task = check_images(drop_empty_queries(dedupe_queries(task)), skip_missing)
    excluded = _exclusions(task)
    unreachable = sum(
        1
        for q in task.queries
        if q.positives and not any(p in task.pool and p not in excluded.get(q.id, ()) for p in q.positives)
    )
    return replace(task, issues=_add(task.issues, "queries_without_positive_in_pool", unreachable))


# ------------------------------------------------------------------ first stage


def _read_rows(path: Path, consequence: str = "") -> tuple[list[dict[str, Any]], bool]:
    """Rows of a file we append to, and whether every line was whole.

    A damaged line is dropped on its own and reported with its file and line (``consequence`` says
    what follows from that); a torn last line (an interrupted write) is dropped quietly.
    """
    found = read_appended(path)
    for msg in found.damaged:
        print(f"[eval] {msg}: damaged line dropped{consequence}", file=sys.stderr)
    return found.rows, found.intact


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
        rows, intact = _read_rows(path, "; the first stage is computed again")
        if intact:
            return {r["qid"]: list(zip(r["ranked"], r["scores"])) for r in rows}
    from vretrver.retrieval.search import first_stage

    depth = depth_of(task, cfg)
    excluded = _exclusions(task)
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


# ------------------------------------------------------------------ reranking


def reranker_model(cfg: EvalConfig) -> str:
    """The checkpoint the engine loads ("tiny": the cached tiny random Qwen2.5-VL, built on first use)."""
    if cfg.reranker == "tiny":
        from vretrver.testing.tiny_models import tiny_model_path

        return str(tiny_model_path("qwen2_5_vl"))
    if not cfg.reranker:
        raise ValueError("no reranker given")
    return cfg.reranker


def make_reranker_engine(cfg: EvalConfig, model: str | None = None) -> Engine:
    from vretrver.engines.factory import make_engine

    return make_engine(cfg.engine, model or reranker_model(cfg), **cfg.engine_args)


def rerank_config(cfg: EvalConfig) -> RerankConfig:
    from vretrver.protocol import load_profile
    from vretrver.rerank import RerankConfig

    return RerankConfig(
        profile=cfg.profile,
        max_tool_calls=cfg.max_tool_calls,
        window=cfg.resolved_window(),
        stride=cfg.stride,
        top_n=cfg.resolved_top_n(),
        window_mode=cfg.window_mode,
        scheduler=cfg.scheduler,
        max_inflight=cfg.max_inflight,
        generation=GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            stop=list(load_profile(cfg.profile).stop),
        ),
    )


def rerank_rows(
    samples: Sequence[Sample], engine: Engine, rcfg: RerankConfig, image_dir: Path
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Rerank samples (each holding its first-stage list); per query its result row and trajectories."""
    from vretrver.rerank import rerank_windows
    from vretrver.scheduler import rerank_continuous_list

    samples = list(samples)
    if rcfg.scheduler == "continuous":
        results = rerank_continuous_list(samples, engine, rcfg)
    else:
        results = rerank_windows(samples, engine, rcfg)
    return [query_rows(s, r, image_dir) for s, r in zip(samples, results, strict=True)]


def query_rows(s: Sample, r: WindowedResult, image_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One reranked query's result row and its trajectories (tool images saved under ``image_dir``)."""
    trajs = []
    for w, ep in enumerate(r.episodes):
        rec = ep.to_record(image_dir)
        rec.update(qid=r.sample_id, window=w, window_start=ep.sample.meta.get("window_start", 0))
        rec["window_applied"] = r.applied[w]  # official mode: False when the answer left it unchanged
        rec["candidate_ids"] = [c.id for c in ep.sample.candidates]
        trajs.append(rec)
    row = {
        "qid": r.sample_id,
        "first_stage": [c.id for c in s.candidates],
        "reranked": r.ranked_ids,
        "n_valid_calls": [e.n_valid_calls for e in r.episodes],
        "n_invalid_calls": [e.n_invalid_calls for e in r.episodes],
        "answered": [e.answered for e in r.episodes],
        "failed": [e.failed for e in r.episodes if e.failed],
        "window_applied": r.applied,
    }
    return row, trajs


class RerankWorker:
    """One engine inside a Ray actor; reranks a chunk and returns plain rows (tool images as PNG bytes)."""

    def __init__(self, cfg: EvalConfig, model: str, cpu_threads: int | None = None):
        if cpu_threads:
            try:
                import torch

                torch.set_num_threads(cpu_threads)
            except ImportError:
                pass
        self.engine = make_reranker_engine(cfg, model)
        self.rcfg = rerank_config(cfg)

    def rerank(self, samples: list[Sample]) -> tuple[list[tuple[dict, list[dict]]], dict[str, bytes]]:
        with tempfile.TemporaryDirectory(prefix="vretrver-img-") as tmp:
            rows = rerank_rows(samples, self.engine, self.rcfg, Path(tmp))
            images = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
        return rows, images

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class _Reranker:
    """The engine of a run: built on first use, in this process or as Ray actors; closed at the end."""

    def __init__(self, cfg: EvalConfig, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine
        self.own_engine = engine is None
        self.actors: list[Any] = []
        self.pool: Any = None
        self.rcfg: Any = None

    def _start(self) -> None:
        if self.rcfg is not None:
            return
        self.rcfg = rerank_config(self.cfg)
        if self.engine is not None:
            return
        model = reranker_model(self.cfg)
        if self.cfg.ray_address is None:
            self.engine = make_reranker_engine(self.cfg, model)
            return
        import ray
        from ray.util import ActorPool

        if not ray.is_initialized():
            ray.init(address=None if self.cfg.ray_address == "local" else self.cfg.ray_address)
        res = ray.cluster_resources()
        cpus = max(1, int(res.get("CPU", 1)))
        gpus = 0 if self.cfg.engine == "openai" else int(res.get("GPU", 0))
        if gpus:
            per = int(self.cfg.engine_args.get("tensor_parallel_size", 1)) if self.cfg.engine == "vllm" else 1
            n = min(self.cfg.ray_workers or gpus // per, max(1, gpus // per))
            opts: dict[str, Any] = {"num_gpus": per, "num_cpus": 1}
            threads = None
        else:
            n = min(self.cfg.ray_workers or 8, cpus)
            opts = {"num_cpus": cpus // n}
            threads = cpus // n
        print(f"[eval] reranking on {n} Ray actors ({opts})", file=sys.stderr)
        actor_cls = ray.remote(**opts)(RerankWorker)
        self.actors = [actor_cls.remote(self.cfg, model, threads) for _ in range(n)]
        self.pool = ActorPool(self.actors)

    def map(self, chunks: list[list[Sample]], image_dir: Path) -> Iterator[list[tuple[dict, list[dict]]]]:
        """Reranked rows of each chunk, in chunk order (Ray: chunks run in parallel, results in order)."""
        self._start()
        if self.pool is None:
            for chunk in chunks:
                yield rerank_rows(chunk, self.engine, self.rcfg, image_dir)
            return
        for rows, images in self.pool.map(lambda a, c: a.rerank.remote(c), chunks):
            if images:
                image_dir.mkdir(parents=True, exist_ok=True)
                for name, data in images.items():
                    (image_dir / name).write_bytes(data)
            yield rows

    def streams(self) -> bool:
        """Whether queries go through :meth:`stream` (continuous scheduling in this process)."""
        return self.cfg.scheduler == "continuous" and self.cfg.ray_address is None

    def stream(
        self,
        samples: Iterable[Sample],
        image_dir: Path,
        save: Callable[[list[tuple[dict[str, Any], list[dict[str, Any]]]]], None],
    ) -> None:
        """Rerank with continuous scheduling; ``save`` gets the rows of queries as they finish."""
        from vretrver.scheduler import rerank_continuous

        self._start()
        rerank_continuous(
            samples,
            self.engine,
            self.rcfg,
            lambda done: save([query_rows(s, r, image_dir) for s, r in done]),
        )

    def close(self) -> None:
        if self.actors:
            import ray

            with contextlib.suppress(Exception):  # the actors are killed below either way
                ray.get([a.close.remote() for a in self.actors], timeout=60)
            for a in self.actors:
                ray.kill(a)
            self.actors, self.pool = [], None
        elif self.own_engine and self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()


def _append_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows as one write, flushed to disk, so a crash tears at most the last line."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(dumps_line(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def load_finished(
    res_path: Path, traj_path: Path, qids: set[str], retry_failed: bool = True
) -> dict[str, list[str]]:
    """Finished queries of an earlier run, after repairing what an interruption or damage left.

    A damaged line is dropped on its own (and reported); a torn last line is cut off; a query listed
    twice keeps its first line. With ``retry_failed`` a query whose engine failed in any window is not
    finished. Trajectories of unfinished queries are removed, as those queries will be reranked again.
    """
    rows, intact = _read_rows(res_path, "; its query is reranked again")
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
        trajs, traj_intact = _read_rows(traj_path, "; that window is missing from the viewer")
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
    reranker: _Reranker,
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
        _with_candidates(q, fs_runs[q.id], task)
        for q in task.queries
        if q.id not in done and fs_runs.get(q.id)
    )
    image_dir = out / "trajectories" / "img"
    with tqdm(
        total=n_ready, initial=n_ready - n_todo, desc=f"rerank {task.name}", disable=not progress
    ) as bar:

        def save(rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
            # Trajectories first, then results: a query counts as done only once both are on disk.
            _append_lines(traj_path, [t for _, trajs in rows for t in trajs])
            _append_lines(res_path, [r for r, _ in rows])
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


def _warn_failures(task: str, f: dict[str, int]) -> None:
    if f["failed_episodes"]:
        print(
            f"[eval] {task}: the engine failed {f['failed_episodes']} of {f['episodes']} episodes; "
            f"{f['failed_queries']} of {f['reranked_queries']} queries kept first-stage order in those "
            "windows. Run the same command again to retry them.",
            file=sys.stderr,
        )


def _with_candidates(q: Sample, ranked: list[tuple[str, float]], task: TaskData) -> Sample:
    return replace(
        q, candidates=[task.pool[d] for d, _ in ranked if d in task.pool], task=q.task or task.name
    )


# ------------------------------------------------------------------ the whole run


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
    from vretrver.benchmarks.registry import load_benchmark

    reader_args = dict(cfg.reader_args)
    if registry.get_spec(cfg.benchmark).pool_options:
        reader_args.update(pool=cfg.pool, progress=progress, instruction=cfg.instruction)
    return load_benchmark(
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
    embedders: dict[str, Any] = {}
    reranker = _Reranker(cfg, engine)
    entries: dict[str, dict[str, Any]] = {}
    submissions: dict[str, str] = {}
    run_name = Path(cfg.reranker).name if cfg.reranker else "first_stage"
    try:
        # Every task's first stage before any reranking: on Ray, the embedding actors are gone before
        # the reranking actors take the GPUs (or CPUs).
        staged = []
        for task in tasks:
            loaded = task
            task = prepare_task(task, cfg.skip_missing)
            fs = first_stage_runs(task, cfg, out, embedders, progress, loaded)
            task = after_first_stage(task, cfg, out)
            samples_path = out / "samples" / f"{task.name}.jsonl"
            if not samples_path.is_file():
                write_samples(
                    samples_path, (_with_candidates(q, fs.get(q.id, []), task) for q in task.queries)
                )
            write_trec(out / "runs" / f"{task.name}.first_stage.trec", fs, "first_stage")
            staged.append((task, fs))
        embedders.clear()
        for task, fs in staged:
            fs_ids = {q.id: [d for d, _ in fs.get(q.id, [])] for q in task.queries}
            final = fs_ids
            reranked = None
            failures = None
            if cfg.reranker:
                rr = rerank_task(task, fs, cfg, out, reranker, progress)
                failures = engine_failures(out / "results" / f"{task.name}.jsonl")
                _warn_failures(task.name, failures)
                # Candidates past the reranked top-N keep their first-stage order behind it.
                reranked = {}
                for q in task.queries:
                    head = rr.get(q.id, [])
                    seen = set(head)
                    reranked[q.id] = head + [d for d in fs_ids[q.id] if d not in seen]
                final = reranked
                write_trec(
                    out / "runs" / f"{task.name}.trec",
                    {q: [(d, float(len(r) - i)) for i, d in enumerate(r)] for q, r in reranked.items()},
                    run_name,
                )
            else:
                write_trec(out / "runs" / f"{task.name}.trec", fs, "first_stage")
            if task.meta.get("submission_only"):
                spec = registry.spec_of_task(task.name, cfg.benchmark)
                if spec is None or spec.write_submission is None:
                    raise ValueError(f"{task.name}: labels are private, and no submission format is known")
                sub = out / f"{task.name}_submission.json"
                spec.write_submission(sub, final, [q.id for q in task.queries])
                submissions[task.name] = str(sub)
                continue
            fs_score = score_runs(task, fs_ids, cfg.benchmark)
            rr_score = score_runs(task, reranked, cfg.benchmark) if reranked is not None else None
            counts = {
                **task.issues,
                "no_positives": fs_score.n_no_positives,
                "empty_first_stage": sum(1 for q in task.queries if q.positives and not fs_ids[q.id]),
            }
            entries[task.name] = task_entry(
                fs_score.n_scored,
                fs_score.metrics,
                rr_score.metrics if rr_score else None,
                task.metric or paper_metric(task.name),
                counts,
                failures,
            )
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


def _ray_initialized() -> bool:
    try:
        import ray
    except ImportError as e:
        raise ValueError("--ray-address needs Ray: pip install 'ray[default]'") from e
    return ray.is_initialized()
