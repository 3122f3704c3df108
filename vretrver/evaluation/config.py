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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vretrver.benchmarks import registry
from vretrver.benchmarks.registry import find_spec
from vretrver.options import option

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


def _benchmarks() -> list[str]:
    return registry.names()


def _pools() -> tuple[str, ...]:
    from vretrver.benchmarks.mbeir import POOLS

    return POOLS


def _engines() -> tuple[str, ...]:
    from vretrver.engines.factory import RERANK_ENGINES

    return RERANK_ENGINES


def _window_modes() -> tuple[str, ...]:
    from vretrver.rerank import WINDOW_MODES

    return WINDOW_MODES


def _schedulers() -> tuple[str, ...]:
    from vretrver.rerank import SCHEDULERS

    return SCHEDULERS


def _index_kinds() -> tuple[str, ...]:
    from vretrver.retrieval.index import INDEX_KINDS

    return INDEX_KINDS


# Every setting of a run, declared once: the CLI (``vretrver eval``), ``--config`` files and key=value
# overrides are made from these fields and their help text (vretrver.options).
@dataclass
class EvalConfig:
    benchmark: str = option(choices=_benchmarks, help="the benchmark (see the README's benchmark table)")
    tasks: list[str] | None = option(None, "comma-separated task names (default: all of the benchmark)")
    data_root: str | None = option(None, "the unpacked benchmark folder (not needed for tuxpaint)")
    split: str | None = option(None, "benchmark split (default: the evaluation split)")
    limit: int | None = option(None, "score only the first N queries of each task")
    pool: str = option(
        "local",
        "M-BEIR candidate pool: each task's own (default, the papers' tables); 'global', the union pool "
        "filtered by each query's candidate modality; 'lamra-global', LamRA's global setting (the 16 local "
        "pools concatenated, copies kept, no modality filter)",
        choices=_pools,
    )
    instruction: str = option(
        "first",
        "M-BEIR query instruction: 'first' of the task's list (default) or 'random[:SEED]', one drawn "
        "per query as LamRA does, seeded (default seed 0) so runs repeat",
    )
    reader_args: dict[str, Any] = option(
        default_factory=dict,
        help="more keyword arguments for the benchmark reader as JSON, e.g. '{\"rounds\": 3}' (visdial) or "
        '\'{"duplicates": "drop"}\' (genecis, mtfiq), or as key=value pairs (rounds=3); an unknown key lists '
        "the ones the reader takes",
        example='{"rounds": 3}',
    )
    retriever: str = option(
        "offline",
        "offline | lamra[:MODEL] | hash[:DIM] | precomputed:PATH (a .jsonl or .parquet candidate file; "
        "PATH may contain {task}) (default: offline)",
    )
    max_unresolved: int = option(
        0,
        "precomputed lists: how many entries may be lost (hits matching no pool candidate, unknown "
        "candidate or query ids, queries without a row) before the run stops (default: 0)",
    )
    parquet_prompts: bool = option(
        False, "with a V-Retrver parquet as first stage: give each query its prompt from the file"
    )
    reranker: str | None = option(
        None,
        "checkpoint folder or hub id, 'tiny', or 'none' (default)",
        cli_default="none",
        none_words=("none",),
    )
    # The engine kind counts in the fingerprint: greedy decoding in different engines can differ.
    engine: str = option("hf", "inference engine (default: hf)", choices=_engines)
    engine_args: dict[str, Any] = option(
        default_factory=dict,
        help='engine settings as JSON, e.g. \'{"device": "cuda", "dtype": "bfloat16"}\' or '
        '\'{"base_url": "http://localhost:8000/v1"}\', or as key=value pairs (device=cuda,dtype=bfloat16)',
        example='{"device": "cuda"}',
    )
    profile: str = option(
        "v-retrver",
        "prompt profile name or folder (default: the one the checkpoint was trained on: official for "
        "the released V-Retrver checkpoints, v-retrver otherwise; official-original-01 / -02 are the "
        "release's other prompt variants)",
        cli_default=None,
    )
    top_n: int | None = option(
        None, "candidates to rerank (default: the benchmark's: 50; 10 for the zero-shot sets)"
    )
    window: int | None = option(None, "candidates per reranking window (default: the benchmark's, 20)")
    stride: int = option(10, "step between windows (default: 10)")
    window_mode: str = option(
        "ours",
        "ours (default): windows cover each list as it is; official: the release's fixed windows "
        "(30-49, 20-39, 10-29, 0-19), skipped where they do not fit a list, and only a bracketed answer "
        "reorders its window",
        choices=_window_modes,
    )
    max_tool_calls: int | None = option(None, "tool-call budget per window (default: the profile's, 2)")
    temperature: float = option(0.0, "0 = greedy (default)")
    max_new_tokens: int = option(1024, "tokens per model turn (default: 1024)")
    seed: int | None = option(0, "sampling seed (default: 0)")
    index: str = option("flat", "faiss index (default: flat)", choices=_index_kinds)
    chunk_queries: int = option(
        32, "--scheduler rounds (and Ray): queries reranked and saved together (default: 32)"
    )
    scheduler: str = option(
        "continuous",
        "continuous (default): each query and episode advances on its own, up to --max-inflight "
        "episodes in the engine, results saved as queries finish; rounds: one engine call per round of "
        "a chunk of queries. Greedy results are the same",
        choices=_schedulers,
    )
    max_inflight: int = option(64, "--scheduler continuous: episodes in the engine at once (default: 64)")
    skip_missing: bool = option(False, "score what remains when image files are missing")
    cache_dir: str | None = option(None, "embedding cache (default: OUT/cache)")
    ray_address: str | None = option(
        None,
        "embed and rerank data-parallel on Ray: 'local' (start a local cluster), 'auto' (join the running "
        "one) or a cluster address; one actor per GPU holds an engine",
    )
    ray_workers: int | None = option(None, "Ray actors (default: one per GPU; CPU only: the CPUs, <= 8)")
    retry_failed: bool = option(
        True,
        "resuming: rerank again the queries the engine failed on (default); --no-retry-failed keeps "
        "them as they are (their failed windows in first-stage order)",
    )

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
