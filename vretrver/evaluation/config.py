"""A run's settings (:class:`EvalConfig`), their fingerprint, their checks, and the result folder they own.

Settings that change results (retriever, checkpoint, profile, window, top-N, decoding, ...) are hashed into
``config.json``; a run whose hash differs from the folder's writes to ``<out>-<hash>`` instead of mixing
results. Engine plumbing (engine arguments, chunk size, caches, Ray) is not hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vretrver.benchmarks import registry
from vretrver.benchmarks.registry import find_spec

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
