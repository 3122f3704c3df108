"""The engine of a run and what one reranked query writes.

Serial: one engine in this process. With ``ray_address`` the reranking is data parallel: one Ray actor per
GPU (or ``ray_workers`` CPU actors) holds an engine, chunks of queries go to the actors through Ray's
``ActorPool``, and the rows come back in query order (image paths must be readable on every node).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vretrver.engines.base import Engine, GenerationConfig
from vretrver.samples import Sample

if TYPE_CHECKING:
    from vretrver.evaluation.config import EvalConfig
    from vretrver.rerank import RerankConfig, WindowedResult


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


class Reranker:
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
