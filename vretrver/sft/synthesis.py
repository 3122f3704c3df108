"""Teacher synthesis and rejection sampling: run episodes, filter them, keep the good ones, resumably.

Both stages are the same loop with different settings:

* **teacher synthesis** (SFT data): a strong teacher behind any engine (usually the OpenAI-compatible
  engine in front of a vLLM server with Qwen2.5-VL-72B-Instruct) runs the ``annotation`` profile (the
  ranking prompt plus guidance); up to ``attempts`` tries per sample, stopping once ``keep_per_sample``
  trajectories pass the filter;
* **rejection sampling** (RFT data): the SFT checkpoint runs the plain ``v-retrver`` profile, k
  trajectories per sample at temperature > 0, and every distinct accepted one is kept.

The tools run for real (:class:`~vretrver.episode.Episode`), so observations and returned images are
the ones our tools produce. Each attempt becomes one line of ``trajectories.jsonl`` (see
:mod:`vretrver.sft.records`); images the tools returned are saved under ``images/`` for kept
trajectories. Lines are appended chunk by chunk, so an interrupted run resumes where it stopped; all
live episodes of a chunk go to the engine together (the engine batches or sends them concurrently).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vretrver.engines.base import Engine, GenerationConfig
from vretrver.episode import Episode, dumps_record
from vretrver.protocol import load_profile
from vretrver.rerank import run_episodes
from vretrver.samples import Sample, atomic_write_text, safe_name
from vretrver.sft.filter import FilterConfig, assistant_texts, format_stats, judge, summarize
from vretrver.sft.records import (
    RECORD_VERSION,
    drop_torn_tail,
    escape_sample,
    iter_records,
    record_id,
    tool_config_to_dict,
)

RECORDS_FILE = "trajectories.jsonl"
STATS_FILE = "stats.json"
RUN_FILE = "run.json"
IMAGES_DIR = "images"


@dataclass
class SynthesisConfig:
    profile: str = "annotation"  # what the model runs with (name or folder)
    export_profile: str | None = None  # what the exported data shows (default: the profile's export_profile)
    attempts: int = 4  # tries per sample
    keep_per_sample: int | None = 1  # stop after this many kept trajectories; None: keep all accepted
    max_tool_calls: int | None = None  # None: the profile's budget
    chunk_size: int = 64  # samples per saved chunk
    batch_size: int | None = None  # episodes per engine call (None: the whole chunk)
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int | None = 0  # attempt a uses seed + a
    dedupe: bool = True  # an accepted trajectory identical to a kept one is not kept again
    save_rejected_images: bool = False
    filter: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.keep_per_sample is not None and self.keep_per_sample < 1:
            raise ValueError(f"keep_per_sample must be >= 1 or None, got {self.keep_per_sample}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.attempts > 1 and self.temperature <= 0:
            raise ValueError(
                "several attempts per sample need temperature > 0 (greedy decoding repeats itself)"
            )


def _run_settings(profile_name: str, export_profile: str, max_calls: int, engine: Engine) -> dict:
    return {
        "profile": profile_name,
        "export_profile": export_profile,
        "max_tool_calls": max_calls,
        "coordinates": engine.tool_config.coordinates,
    }


def _check_run_file(out: Path, settings: dict[str, Any]) -> None:
    path = out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{out}: this folder holds a run with other settings {diff} (old, new); "
                "use a new output folder or the same settings to resume"
            )


def synthesize(
    samples: Sequence[Sample],
    engine: Engine,
    out_dir: str | os.PathLike,
    config: SynthesisConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run, filter and record episodes for ``samples`` into ``out_dir``; return the statistics.

    Resumable: attempts already in ``out_dir/trajectories.jsonl`` are not run again. The statistics
    (per task: tried, accepted, kept, acceptance rate, rejection reasons) cover every session of the
    run and are also written to ``out_dir/stats.json``.
    """
    cfg = config or SynthesisConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(cfg.profile)
    export_profile = cfg.export_profile or profile.settings.get("export_profile") or cfg.profile
    load_profile(export_profile)  # fail now, not at export time
    max_calls = profile.max_tool_calls if cfg.max_tool_calls is None else cfg.max_tool_calls
    samples, n_escaped = _checked_samples(samples)

    settings = _run_settings(cfg.profile, export_profile, max_calls, engine)
    _check_run_file(out, settings)
    atomic_write_text(
        out / RUN_FILE, json.dumps({**settings, "config": _jsonable(asdict(cfg))}, indent=2) + "\n"
    )

    records_path = out / RECORDS_FILE
    drop_torn_tail(records_path)
    state = _resume_state(records_path, samples)

    def wanted(s: Sample) -> bool:
        return cfg.keep_per_sample is None or state[s.id]["kept"] < cfg.keep_per_sample

    todo_total = sum(1 for s in samples for a in range(cfg.attempts) if a not in state[s.id]["attempts"])
    bar = tqdm(total=todo_total, desc="episodes", disable=not progress)
    tool_cfg = tool_config_to_dict(engine.tool_config)
    with open(records_path, "a", encoding="utf-8") as f:
        for attempt in range(cfg.attempts):
            todo = [s for s in samples if attempt not in state[s.id]["attempts"] and wanted(s)]
            gen = GenerationConfig(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=None if cfg.seed is None else cfg.seed + attempt,
                stop=list(profile.stop),
            )
            for start in range(0, len(todo), cfg.chunk_size):
                chunk = todo[start : start + cfg.chunk_size]
                episodes = run_episodes(chunk, engine, profile, gen, max_calls, cfg.batch_size)
                lines = []
                for ep in episodes:
                    rec = _record(
                        ep, attempt, cfg, state[ep.sample.id], out, export_profile, max_calls, engine, gen
                    )
                    rec["tool_config"] = tool_cfg
                    lines.append(dumps_record(rec) + "\n")
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(chunk))
        bar.update(bar.total - bar.n)  # attempts skipped because the sample already had enough
    bar.close()
    stats = _run_stats(records_path, settings, n_escaped)
    atomic_write_text(out / STATS_FILE, json.dumps(stats, indent=2) + "\n")
    if progress:
        print(format_stats(stats))
    return stats


def _checked_samples(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """The samples as the model will see them, and how many placeholders were escaped in them.

    Ids must be unique and every sample needs a positive among its candidates. Literal <image> / <video>
    / <audio> in texts would break the exported placeholder count: they are cleaned before the model sees
    them, so the exported text stays what the model saw.
    """
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"sample ids must be unique (e.g. {dup!r} appears more than once)")
    cleaned = [escape_sample(s) for s in samples]
    out = [s for s, _ in cleaned]
    bad = [s.id for s in out if not s.positive_numbers()]
    if bad:
        raise ValueError(f"{len(bad)} samples have no positive among their candidates, e.g. {bad[0]!r}")
    return out, sum(n for _, n in cleaned)


def _resume_state(records_path: Path, samples: Sequence[Sample]) -> dict[str, dict[str, Any]]:
    """Per sample, what earlier sessions recorded: attempts run, trajectories kept and their texts."""
    state: dict[str, dict[str, Any]] = {s.id: {"attempts": set(), "kept": 0, "texts": set()} for s in samples}
    if records_path.is_file():
        for _, r in iter_records(records_path):
            st = state.get(r.get("sample_id"))
            if st is None:
                continue
            st["attempts"].add(r.get("attempt"))
            if r.get("kept"):
                st["kept"] += 1
                st["texts"].add(assistant_texts(r["trajectory"]))
    return state


def _run_stats(records_path: Path, settings: dict[str, Any], n_escaped: int) -> dict[str, Any]:
    """The statistics of every session of the run, read back from the records file."""
    stats = summarize(r for _, r in iter_records(records_path))
    stats["sources"] = source_counts(r for _, r in iter_records(records_path))
    stats["synthetic_records"] = sum(1 for _, r in iter_records(records_path) if r.get("synthetic"))
    if stats["synthetic_records"]:
        stats["note"] = (
            "synthetic trajectories written by a rule-based teacher from the ground truth: they teach the "
            "format of the protocol, not retrieval; not model output"
        )
    stats["settings"] = settings
    stats["escaped_placeholders_this_session"] = n_escaped
    return stats


def _record(
    ep: Episode,
    attempt: int,
    cfg: SynthesisConfig,
    st: dict[str, Any],
    out: Path,
    export_profile: str,
    max_calls: int,
    engine: Engine,
    gen: GenerationConfig,
) -> dict[str, Any]:
    s = ep.sample
    traj = ep.to_record()
    reasons = judge(traj, s.positive_numbers(), len(s.candidates), max_calls, cfg.filter)
    accepted = not reasons
    kept = accepted and (cfg.keep_per_sample is None or st["kept"] < cfg.keep_per_sample)
    duplicate = False
    if kept and cfg.dedupe and assistant_texts(traj) in st["texts"]:
        kept, duplicate = False, True
    if kept or cfg.save_rejected_images:
        rel = Path(IMAGES_DIR) / safe_name(s.id) / f"a{attempt}"
        traj = ep.to_record(image_dir=out / rel)
        for t in traj["turns"]:
            if "images" in t:
                t["images"] = [str(rel / name) for name in t["images"]]
    st["attempts"].add(attempt)
    if kept:
        st["kept"] += 1
        st["texts"].add(assistant_texts(traj))
    return {
        "version": RECORD_VERSION,
        "id": record_id(s.id, attempt),
        "sample_id": s.id,
        "attempt": attempt,
        "task": s.task,
        "kept": kept,
        "accepted": accepted,
        "duplicate": duplicate,
        "reasons": reasons,
        "profile": cfg.profile,
        "export_profile": export_profile,
        "max_tool_calls": max_calls,
        "coordinates": engine.tool_config.coordinates,
        "engine": getattr(engine, "name", type(engine).__name__),
        # Synthetic turns (a rule-based teacher, not a model) stay labelled through export and statistics.
        "source": getattr(engine, "name", type(engine).__name__),
        "synthetic": bool(getattr(engine, "synthetic", False)),
        "generation": asdict(gen),
        "sample": s.to_dict(),
        "trajectory": traj,
    }


def source_counts(records: Any) -> dict[str, int]:
    """How many records each source (the engine that wrote the turns) contributed."""
    return dict(Counter(r.get("source") or r.get("engine") or "unknown" for r in records))


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def rejection_sample(
    samples: Sequence[Sample],
    engine: Engine,
    out_dir: str | os.PathLike,
    k: int = 8,
    temperature: float = 1.0,
    seed: int | None = 0,
    profile: str = "v-retrver",
    max_tool_calls: int | None = None,
    max_new_tokens: int = 1024,
    chunk_size: int = 64,
    filter: FilterConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """RFT data: k trajectories per sample from the model at ``temperature``; keep the distinct ones that
    are well formed and rank the positive first. Returns the statistics (acceptance rate per task)."""
    if temperature <= 0:
        raise ValueError(f"rejection sampling needs temperature > 0, got {temperature}")
    cfg = SynthesisConfig(
        profile=profile,
        export_profile=profile,
        attempts=k,
        keep_per_sample=None,
        max_tool_calls=max_tool_calls,
        chunk_size=chunk_size,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        filter=filter or FilterConfig(),
    )
    return synthesize(samples, engine, out_dir, cfg, progress=progress)
