"""The evaluation pipeline: benchmark -> first stage -> sliding-window reranking -> metrics -> tables.

A result folder holds::

    config.json                 the settings that define the results (a different setting = a new folder)
    first_stage/<task>.jsonl    {"qid", "ranked", "scores"}: the first-stage top-N per query
    samples/<task>.jsonl        each query with its top-N candidates (the viewer and data builders read it)
    results/<task>.jsonl        one line per reranked query, appended as queries finish (resume point)
    trajectories/<task>.jsonl   every episode of every window, for the viewer (images in trajectories/img/)
    runs/<task>.trec            TREC run of the final ranking (runs/<task>.first_stage.trec too)
    summary.json / .md / .csv   per-task metrics, first stage vs reranked, and the average
    <task>_submission.json      CIRCO test split only: the server's format (its labels are private)

Resuming: the first stage of a task is saved once, atomically; reranked queries are appended chunk by
chunk (trajectories first, then results), so an interrupted run reads back the finished queries, drops a
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
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from vretrver.engines.base import Engine, GenerationConfig
from vretrver.metrics import paper_metric, score_task
from vretrver.report.tables import summarize, task_entry, write_summary, write_trec
from vretrver.samples import Sample, SampleError, TaskData, atomic_write_text, write_jsonl, write_samples

if TYPE_CHECKING:
    from vretrver.rerank import RerankConfig

ZERO_SHOT = ("circo", "genecis", "visdial", "vist", "mtfiq")
# CIRCO's evaluation server scores the top 50 of each query, and its local mAP goes up to @50.
CIRCO_DEPTH = 50
# Settings that do not change results: left out of the fingerprint.
POOL_BENCHMARKS = ("mbeir", "heldout")  # the benchmarks with a choice of candidate pool
_PLUMBING = ("engine_args", "chunk_queries", "cache_dir", "tasks", "ray_address", "ray_workers")
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
)
_SECRET_WORDS = ("key", "token", "secret", "password")


@dataclass
class EvalConfig:
    benchmark: str
    tasks: list[str] | None = None
    data_root: str | None = None
    split: str | None = None
    limit: int | None = None
    pool: str = "local"  # M-BEIR: each task's local pool, or "global", the union pool of all tasks
    # offline | lamra[:MODEL] | hash[:DIM] | precomputed:PATH (PATH may contain {task})
    retriever: str = "offline"
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
    chunk_queries: int = 32  # queries reranked (and saved) together; one Ray task each
    skip_missing: bool = False
    cache_dir: str | None = None
    ray_address: str | None = None  # "local", "auto" or a cluster address: data-parallel reranking
    ray_workers: int | None = None  # actors (default: one per GPU; without GPUs, the cluster's CPUs, <= 8)

    def resolved_top_n(self) -> int:
        if self.top_n is not None:
            return self.top_n
        return 10 if self.benchmark in ZERO_SHOT else 50

    def fingerprint(self) -> str:
        """Hash of every setting that changes results (not engine plumbing, caches or chunk sizes)."""
        keep = {k: v for k, v in asdict(self).items() if k not in _PLUMBING}
        keep["top_n"] = self.resolved_top_n()
        if not self.reranker:
            # First stage only: the reranking settings cannot change anything.
            for k in _RERANK_SETTINGS:
                keep.pop(k)
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]

    def check(self) -> None:
        """Reject settings that cannot work before anything is loaded."""
        for name in ("window", "stride", "chunk_queries", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.top_n is not None and self.top_n < 1:
            raise ValueError(f"top-n must be >= 1, got {self.top_n}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise ValueError(f"ray-workers must be >= 1, got {self.ray_workers}")
        if self.pool != "local" and (self.benchmark not in POOL_BENCHMARKS or self.pool != "global"):
            raise ValueError(
                f"pool must be 'local' or, for {' / '.join(POOL_BENCHMARKS)}, 'global'; got {self.pool!r}"
            )
        if self.retriever.startswith("precomputed:") and not self.retriever.split(":", 1)[1]:
            raise ValueError("--retriever precomputed:PATH needs a path")
        if self.reranker:
            from vretrver.protocol import load_profile

            load_profile(self.profile)  # an unknown profile fails now, not after the first stage

    def public_dict(self) -> dict[str, Any]:
        """The settings as written to config.json and summary.json (secrets in engine_args masked)."""
        d = asdict(self)
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
    """Fail listing missing image files, or (skip_missing) drop what needs them and count it."""
    missing = {p for p in set(_images_of(task)) if not os.path.exists(p)}
    if not missing:
        return task
    first = sorted(missing)[:5]
    if not skip_missing:
        raise MissingImagesError(
            f"{task.name}: {len(missing)} image files are missing (first {len(first)}: {', '.join(first)}); "
            "check --data-root, or pass --skip-missing to score the rest"
        )
    pool = {d: c for d, c in task.pool.items() if not (c.image and c.image in missing)}
    queries = [q for q in task.queries if not any(p in missing for p in q.query.images)]
    issues = _add(task.issues, "missing_image_files", len(missing))
    issues = _add(issues, "missing_image_candidates", len(task.pool) - len(pool))
    issues = _add(issues, "missing_image_queries", len(task.queries) - len(queries))
    print(
        f"[eval] {task.name}: {len(missing)} image files are missing (first: {first[0]}); skipped "
        f"{len(task.queries) - len(queries)} queries and {len(task.pool) - len(pool)} candidates",
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


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON-object lines of a file we append to, and the byte length of that valid prefix.

    A torn last line (an interrupted write) ends the prefix.
    """
    rows: list[dict[str, Any]] = []
    good = 0
    if not path.is_file():
        return rows, good
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not isinstance(row, dict):
                break
            rows.append(row)
            good += len(line)
    return rows, good


def depth_of(task: TaskData, cfg: EvalConfig) -> int:
    """How many first-stage candidates a query keeps: top-N, at least 50 for CIRCO (mAP@50, submission)."""
    top_n = cfg.resolved_top_n()
    if task.meta.get("submission_only") or task.name.startswith("circo"):
        return max(top_n, CIRCO_DEPTH)
    return top_n


def first_stage_runs(
    task: TaskData, cfg: EvalConfig, out: Path, embedder_cache: dict[str, Any], progress: bool = True
) -> dict[str, list[tuple[str, float]]]:
    """Every query's first-stage list (saved once per result folder, read back on resume)."""
    path = out / "first_stage" / f"{task.name}.jsonl"
    if path.is_file():
        rows, _ = _read_rows(path)
        return {r["qid"]: list(zip(r["ranked"], r["scores"])) for r in rows}
    from vretrver.retrieval.search import first_stage

    depth = depth_of(task, cfg)
    excluded = _exclusions(task)
    # Excluded ids may fill the top of a list: fetch deeper by as many as a query excludes at most.
    fetch = depth + max((len(v) for v in excluded.values()), default=0)
    if cfg.retriever.startswith("precomputed:"):
        # A candidate file (our jsonl or V-Retrver's parquet); no embedder is built.
        src = cfg.retriever.split(":", 1)[1].replace("{task}", task.name)
        runs = first_stage(task, cfg.retriever, top_n=fetch, precomputed=src)
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
        window=cfg.window,
        stride=cfg.stride,
        top_n=cfg.resolved_top_n(),
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

    out = []
    for s, r in zip(samples, rerank_windows(samples, engine, rcfg), strict=True):
        trajs = []
        for w, ep in enumerate(r.episodes):
            rec = ep.to_record(image_dir)
            rec.update(qid=r.sample_id, window=w, window_start=ep.sample.meta.get("window_start", 0))
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
        }
        out.append((row, trajs))
    return out


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
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def load_finished(res_path: Path, traj_path: Path, qids: set[str]) -> dict[str, list[str]]:
    """Finished queries of an earlier run, after repairing what an interruption may have left.

    A torn last result line is cut off; a query listed twice keeps its first line; trajectories of
    queries without a result line (written just before the interruption) are removed, as those queries
    will be reranked again.
    """
    rows, good = _read_rows(res_path)
    done: dict[str, list[str]] = {}
    clean = []
    for r in rows:
        qid, ranked = r.get("qid"), r.get("reranked")
        if not isinstance(qid, str) or not isinstance(ranked, list) or qid in done or qid not in qids:
            continue
        done[qid] = ranked
        clean.append(r)
    if res_path.is_file() and (len(clean) != len(rows) or good != res_path.stat().st_size):
        write_jsonl(res_path, clean)
    if traj_path.is_file():
        trajs, tgood = _read_rows(traj_path)
        kept = [t for t in trajs if t.get("qid") in done]
        if len(kept) != len(trajs) or tgood != traj_path.stat().st_size:
            write_jsonl(traj_path, kept)
    return done


def rerank_task(
    task: TaskData,
    fs_runs: dict[str, list[tuple[str, float]]],
    cfg: EvalConfig,
    out: Path,
    reranker: _Reranker,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Rerank every query's top-N in windows; append results as chunks finish; resume from the file."""
    res_path = out / "results" / f"{task.name}.jsonl"
    traj_path = out / "trajectories" / f"{task.name}.jsonl"
    done = load_finished(res_path, traj_path, {q.id for q in task.queries})
    todo = [q for q in task.queries if q.id not in done and fs_runs.get(q.id)]
    if not todo:
        return done
    res_path.parent.mkdir(parents=True, exist_ok=True)
    traj_path.parent.mkdir(parents=True, exist_ok=True)
    n_ready = sum(1 for q in task.queries if fs_runs.get(q.id))
    chunks = [
        [_with_candidates(q, fs_runs[q.id], task) for q in todo[i : i + cfg.chunk_queries]]
        for i in range(0, len(todo), cfg.chunk_queries)
    ]
    with tqdm(
        total=n_ready, initial=n_ready - len(todo), desc=f"rerank {task.name}", disable=not progress
    ) as bar:
        for chunk, rows in zip(chunks, reranker.map(chunks, out / "trajectories" / "img")):
            if [r["qid"] for r, _ in rows] != [s.id for s in chunk]:
                raise RuntimeError(f"{task.name}: reranked rows came back out of order")
            # Trajectories first, then results: a query counts as done only once both are on disk.
            _append_lines(traj_path, [t for _, trajs in rows for t in trajs])
            _append_lines(res_path, [r for r, _ in rows])
            for r, _ in rows:
                done[r["qid"]] = r["reranked"]
            bar.update(len(chunk))
    return done


def _with_candidates(q: Sample, ranked: list[tuple[str, float]], task: TaskData) -> Sample:
    return replace(
        q, candidates=[task.pool[d] for d, _ in ranked if d in task.pool], task=q.task or task.name
    )


# ------------------------------------------------------------------ the whole run


def _ks(task: TaskData, benchmark: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if benchmark == "genecis" or task.name.startswith("genecis"):
        return (1, 2, 3), ()
    if benchmark == "circo" or task.name.startswith("circo"):
        return (1, 5, 10), (5, 10, 25, 50)
    return (1, 5, 10), ()


def evaluate(
    cfg: EvalConfig, out: str | os.PathLike, progress: bool = True, engine: Engine | None = None
) -> tuple[Path, dict[str, Any]]:
    """Run the evaluation; return the result folder and the summary.

    ``engine``: an engine to rerank with instead of building one from ``cfg`` (not closed here);
    ``cfg.reranker`` must still name its checkpoint, which identifies the results.
    """
    from vretrver.benchmarks.registry import load_benchmark

    cfg.check()
    if engine is not None and not cfg.reranker:
        raise ValueError("evaluate(engine=...): set cfg.reranker to the engine's checkpoint")
    reader_args = {"pool": cfg.pool, "progress": progress} if cfg.benchmark in POOL_BENCHMARKS else {}
    tasks = load_benchmark(
        cfg.benchmark,
        data_root=cfg.data_root,
        tasks=cfg.tasks,
        split=cfg.split,
        limit=cfg.limit,
        **reader_args,
    )
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
            task = prepare_task(task, cfg.skip_missing)
            fs = first_stage_runs(task, cfg, out, embedders, progress)
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
            if cfg.reranker:
                rr = rerank_task(task, fs, cfg, out, reranker, progress)
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
                from vretrver.benchmarks.zeroshot import write_circo_submission

                sub = out / f"{task.name}_submission.json"
                write_circo_submission(sub, final, query_ids=[q.id for q in task.queries], k=CIRCO_DEPTH)
                submissions[task.name] = str(sub)
                continue
            positives = {q.id: list(q.positives) for q in task.queries}
            ks, map_ks = _ks(task, cfg.benchmark)
            fs_score = score_task(fs_ids, positives, ks, map_ks)
            rr_score = score_task(reranked, positives, ks, map_ks) if reranked is not None else None
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
