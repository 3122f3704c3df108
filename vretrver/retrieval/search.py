"""The first stage: embed the pool and the queries, search, and hand on the top-N of every query.

``first_stage`` is the one entry point; it embeds through the on-disk cache (resumable), in this process
or over a Ray cluster (``ray_address``: one actor per GPU, CPU actors where there is no GPU), and respects
the per-query restrictions of the benchmarks: ``meta["candidate_modality"]`` (only candidates of exactly
that modality, M-BEIR; not applied when the task's ``meta["modality_filter"]`` is False, as in LamRA's
global setting) and ``meta["gallery"]`` (the query ranks only these ids, GeneCIS).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from vretrver.jsonl import SampleError, write_jsonl
from vretrver.retrieval.base import Embedder, Kind, embed_items, make_embedder
from vretrver.retrieval.cache import Item, embed_cached, run_chunks
from vretrver.retrieval.index import CandidateIndex, exact_topk
from vretrver.retrieval.precomputed import Ranked, read_candidates
from vretrver.samples import Sample, TaskData

log = logging.getLogger(__name__)


def first_stage(
    task: TaskData,
    embedder: Embedder | str,
    top_n: int = 50,
    cache_dir: str | os.PathLike | None = None,
    index: str = "flat",
    *,
    batch_size: int = 32,
    chunk_size: int = 2048,
    ray_address: str | None = None,
    num_workers: int | None = None,
    precomputed: str | os.PathLike | Ranked | None = None,
    index_options: dict[str, Any] | None = None,
    query_batch: int = 1024,
    progress: bool = True,
) -> Ranked:
    """Top-``top_n`` candidates of every query of ``task``: ``{qid: [(did, score), ...]}``, best first.

    ``embedder``: an :class:`Embedder` or a spec for :func:`make_embedder` (``"offline"``, ``"lamra:PATH"``).
    ``index``: ``flat`` (exact), ``fp16`` or ``ivfpq`` (see :mod:`vretrver.retrieval.index`).
    ``ray_address``: embed over Ray (``"local"`` starts a local cluster, ``"auto"`` joins a running one).
    ``precomputed``: a candidate file (our jsonl, or V-Retrver's parquet), or lists already read from one,
    used instead of embedding; its lists are filtered by the same modality and gallery rules and cut to ``top_n``.
    ``progress`` shows a bar per embedding pass.
    Every query of the task has a key; a query with nothing eligible gets an empty list.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    modality_of, gallery_of = _restrictions(task)
    if precomputed is not None:
        return _from_precomputed(task, precomputed, top_n, modality_of, gallery_of)

    emb = make_embedder(embedder) if isinstance(embedder, str) else embedder
    cands = list(task.pool.values())
    cand_ids = [c.id for c in cands]
    common = {
        "cache_dir": cache_dir,
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "progress": progress,
    }
    if ray_address is not None:
        # One set of actors (one model copy per GPU) embeds both sides.
        with RayEmbedPool(emb, ray_address, num_workers) as pool:
            cmat = pool.embed(cands, "candidate", desc=f"{task.name}: candidates", **common)
            qmat = pool.embed(task.queries, "query", desc=f"{task.name}: queries", **common)
    else:
        cmat = embed_cached(emb, cands, "candidate", desc=f"{task.name}: candidates", **common)
        qmat = embed_cached(emb, task.queries, "query", desc=f"{task.name}: queries", **common)

    results: Ranked = {}
    row_of = {d: i for i, d in enumerate(cand_ids)}
    open_queries = [i for i, q in enumerate(task.queries) if gallery_of[q.id] is None]
    if open_queries and cands:
        idx = CandidateIndex(cmat, [c.modality for c in cands], kind=index, **(index_options or {}))
        for s in range(0, len(open_queries), query_batch):
            rows = open_queries[s : s + query_batch]
            filters = [modality_of[task.queries[i].id] for i in rows]
            scores, ids = idx.search(np.asarray(qmat[rows]), top_n, filters)
            for r, i in enumerate(rows):
                results[task.queries[i].id] = [
                    (cand_ids[j], float(sc)) for j, sc in zip(ids[r], scores[r]) if j >= 0
                ]
    missing_gallery = 0
    for i, q in enumerate(task.queries):
        gallery = gallery_of[q.id]
        if gallery is None:
            results.setdefault(q.id, [])
            continue
        rows = [row_of[d] for d in gallery if d in row_of]
        missing_gallery += len(gallery) - len(rows)
        want = modality_of[q.id]
        if want is not None:
            rows = [r for r in rows if cands[r].modality == want]
        scores, picked = exact_topk(cmat, np.asarray(qmat[i]), np.asarray(rows, dtype=np.int64), top_n)
        results[q.id] = [(cand_ids[j], float(sc)) for j, sc in zip(picked, scores)]
    if missing_gallery:
        log.warning("%s: %d gallery ids are not in the pool and were skipped", task.name, missing_gallery)
    return {q.id: results[q.id] for q in task.queries}


def _restrictions(task: TaskData) -> tuple[dict[str, str | None], dict[str, list[str] | None]]:
    modality_of: dict[str, str | None] = {}
    gallery_of: dict[str, list[str] | None] = {}
    filter_modality = task.meta.get("modality_filter", True)
    for q in task.queries:
        cm = q.meta.get("candidate_modality")
        if cm is not None and not isinstance(cm, str):
            raise SampleError(
                f"{task.name}: query {q.id}: field 'meta.candidate_modality': expected a string, got {cm!r}"
            )
        modality_of[q.id] = (cm or None) if filter_modality else None
        g = q.meta.get("gallery")
        if g is not None and (not isinstance(g, list) or not all(isinstance(x, str) for x in g)):
            raise SampleError(
                f"{task.name}: query {q.id}: field 'meta.gallery': expected a list of candidate ids"
            )
        gallery_of[q.id] = list(dict.fromkeys(g)) if g is not None else None
    return modality_of, gallery_of


def _from_precomputed(
    task: TaskData, path: str | os.PathLike | Ranked, top_n: int, modality_of: dict, gallery_of: dict
) -> Ranked:
    if isinstance(path, Mapping):  # read (and its losses counted) by the caller
        lists, counts, path = path, {}, "the given lists"
    else:
        lists, stats = read_candidates(path, task)
        counts = {k: v for k, v in stats.as_dict().items() if v and k not in ("rows", "queries")}
    dropped = 0
    out: Ranked = {}
    for q in task.queries:
        pairs = lists.get(q.id, [])
        want, gallery = modality_of[q.id], gallery_of[q.id]
        allowed = set(gallery) if gallery is not None else None
        kept = [
            (d, s)
            for d, s in pairs
            if (want is None or task.pool[d].modality == want) and (allowed is None or d in allowed)
        ]
        dropped += len(pairs) - len(kept)
        out[q.id] = kept[:top_n]
    if counts or dropped:
        log.warning(
            "%s: candidates from %s: %s, %d outside the query's modality/gallery",
            task.name,
            path,
            counts,
            dropped,
        )
    return out


# --------------------------------------------------------------------------- output


def write_candidates_jsonl(path: str | os.PathLike, results: Ranked) -> None:
    """Write first-stage lists in the jsonl format :func:`read_candidates_jsonl` reads (atomically)."""
    write_jsonl(
        path,
        (
            {"qid": q, "ranked": [d for d, _ in pairs], "scores": [s for _, s in pairs]}
            for q, pairs in results.items()
        ),
    )


def attach_candidates(task: TaskData, results: Ranked, top_n: int | None = None) -> list[Sample]:
    """Queries of ``task`` as samples holding their first-stage candidates (the reranker's input)."""
    out = []
    for q in task.queries:
        ids = [d for d, _ in results.get(q.id, [])][:top_n]
        out.append(dataclasses.replace(q, candidates=[task.pool[d] for d in ids], meta=dict(q.meta)))
    return out


# --------------------------------------------------------------------------- Ray


class _EmbedWorker:
    """Holds one embedder (one model copy) inside a Ray actor."""

    def __init__(self, factory: Callable[[], Embedder], cpu_threads: int | None):
        if cpu_threads:
            try:
                import torch

                torch.set_num_threads(cpu_threads)
            except ImportError:
                pass
        self.embedder = factory()

    def embed(self, idx: int, items: list[Item], kind: Kind, batch_size: int) -> tuple[int, np.ndarray]:
        return idx, embed_items(self.embedder, items, kind, batch_size)


class RayEmbedPool:
    """Ray actors that each hold one copy of an embedder: one per GPU of the cluster (``num_gpus=1``),
    or, without GPUs, ``num_workers`` CPU actors (default: the cluster's CPUs, at most 8).

    Chunks are handed out by Ray's ``ActorPool``. Actors start on the first chunk that is not cached
    (a fully cached run loads no model) and stop on :meth:`close`. Workers rebuild the embedder from its
    spec (``make_embedder``), or unpickle it if it has none. Uses the current Ray session if one is open,
    else ``ray.init(address=ray_address)`` (``"local"`` or None: a local cluster).
    """

    def __init__(
        self, embedder: Embedder | str, ray_address: str | None = None, num_workers: int | None = None
    ):
        self.embedder = make_embedder(embedder) if isinstance(embedder, str) else embedder
        spec = getattr(self.embedder, "spec", None)
        self._factory: Callable[[], Embedder] = (
            functools.partial(make_embedder, spec[0], **spec[1])
            if spec
            else functools.partial(_same, self.embedder)
        )
        self.ray_address = ray_address
        self.num_workers = num_workers
        self._actors: list[Any] = []
        self._pool: Any = None

    def _start(self) -> Any:
        if self._pool is not None:
            return self._pool
        import ray
        from ray.util import ActorPool

        if not ray.is_initialized():
            ray.init(address=None if self.ray_address in (None, "local") else self.ray_address)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        threads: int | None
        if gpus:
            n = self.num_workers or gpus
            opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            threads = None
        else:
            n = self.num_workers or max(1, min(int(resources.get("CPU", 1)), 8))
            threads = max(1, int(resources.get("CPU", 1)) // n)
            opts = {"num_cpus": threads}
        actor_cls = ray.remote(**opts)(_EmbedWorker)
        self._actors = [actor_cls.remote(self._factory, threads) for _ in range(n)]
        self._pool = ActorPool(self._actors)
        return self._pool

    def embed(
        self,
        items: Sequence[Item],
        kind: Kind,
        batch_size: int = 32,
        chunk_size: int = 2048,
        cache_dir: str | os.PathLike | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Rows in the order of ``items``; each finished chunk is cached at once (resumable)."""

        def runner(chunks: list[tuple[int, list[Item]]]) -> Iterator[tuple[int, np.ndarray]]:
            if not chunks:
                return
            pool = self._start()
            yield from pool.map_unordered(lambda a, c: a.embed.remote(c[0], c[1], kind, batch_size), chunks)

        return run_chunks(
            items,
            kind,
            name=self.embedder.name,
            dim=self.embedder.dim,
            runner=runner,
            cache_dir=cache_dir,
            chunk_size=chunk_size,
            desc=desc or f"embed {kind}s over Ray",
            progress=progress,
        )

    def close(self) -> None:
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
        self._actors, self._pool = [], None

    def __enter__(self) -> RayEmbedPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def embed_parallel(
    items: Sequence[Item],
    kind: Kind,
    embedder: Embedder | str,
    *,
    ray_address: str | None = None,
    num_workers: int | None = None,
    batch_size: int = 32,
    chunk_size: int = 2048,
    cache_dir: str | os.PathLike | None = None,
    desc: str | None = None,
) -> np.ndarray:
    """Embed ``items`` over Ray actors (see :class:`RayEmbedPool`) and return the rows in item order."""
    with RayEmbedPool(embedder, ray_address, num_workers) as pool:
        return pool.embed(items, kind, batch_size, chunk_size, cache_dir, desc)


def _same(emb: Embedder) -> Embedder:
    return emb
