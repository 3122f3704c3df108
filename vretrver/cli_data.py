"""``vretrver data ...``: the data builders of the SFT and RFT stages.

    vretrver data samples     training queries + first stage -> rerank samples (positive + K-1 hard negatives)
    vretrver data synthesize  teacher episodes (annotation profile) -> filtered trajectories + statistics
    vretrver data rft         k sampled episodes per sample from the SFT model -> accepted trajectories
    vretrver data export      trajectories -> LLaMA-Factory sharegpt dataset + dataset_info.json entry

The same commands exist as scripts in ``data_tools/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vretrver.cli import json_object_option
from vretrver.engines.factory import ENGINE_KINDS


def _task_caps(text: str | None) -> int | dict[str, int] | None:
    """``--max-per-task 500`` or ``--max-per-task mscoco_task0=200,cirr_task7=100``."""
    if not text:
        return None
    if "=" not in text:
        return int(text)
    caps = {}
    for item in text.split(","):
        name, _, n = item.partition("=")
        if not name or not n.strip().isdigit():
            raise SystemExit(f"--max-per-task: expected N or TASK=N,TASK=N, got {item!r}")
        caps[name.strip()] = int(n)
    return caps


# ----------------------------------------------------------------------------- samples


def add_samples_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", default="mbeir", help="benchmark reader (default: mbeir)")
    p.add_argument("--data-root", help="the unpacked benchmark folder (not needed for tuxpaint)")
    p.add_argument("--tasks", help="comma-separated task names (default: all of the benchmark)")
    p.add_argument("--split", default="train", help="split of the training queries (default: train)")
    p.add_argument("--limit", type=int, help="read at most N queries per task")
    p.add_argument(
        "--retriever", default="offline", help="embedder spec: offline | lamra[:MODEL] | hash[:DIM]"
    )
    p.add_argument(
        "--precomputed",
        help="first-stage lists instead of embedding: a jsonl file, or a folder of <task>.jsonl",
    )
    p.add_argument("--index", default="flat", help="faiss index kind: flat | fp16 | ivfpq")
    p.add_argument(
        "--work-dir", default="outputs/data/first_stage", help="embedding cache and first-stage lists"
    )
    p.add_argument("--k", type=int, default=5, help="candidates per sample, positive included (default 5)")
    p.add_argument("--hard-pool", type=int, default=100, help="negatives come from the top N (default 100)")
    p.add_argument("--skip-top", type=int, default=0, help="skip the N highest-ranked negatives (default 0)")
    p.add_argument("--sampling", choices=("random", "top"), default="random")
    p.add_argument(
        "--image-identity",
        choices=("path", "content"),
        default="path",
        help="near-duplicate images: same path, or also same bytes",
    )
    p.add_argument("--max-per-task", help="cap per task: N, or TASK=N,TASK=N")
    p.add_argument("--total", type=int, help="total samples, split evenly across tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output samples jsonl (statistics go to <out>.stats.json)")


def cmd_samples(ns: argparse.Namespace) -> int:
    from vretrver.benchmarks import load_benchmark
    from vretrver.retrieval import first_stage, make_embedder, read_candidates_jsonl, write_candidates_jsonl
    from vretrver.samples import atomic_write_text, write_samples
    from vretrver.sft.hard_negatives import HardNegativeConfig, build_training_samples, preselect_queries

    cfg = HardNegativeConfig(
        k=ns.k,
        hard_pool=ns.hard_pool,
        skip_top=ns.skip_top,
        sampling=ns.sampling,
        image_identity=ns.image_identity,
        max_per_task=_task_caps(ns.max_per_task),
        total=ns.total,
        seed=ns.seed,
    )
    tasks = load_benchmark(
        ns.benchmark,
        ns.data_root,
        tasks=ns.tasks.split(",") if ns.tasks else None,
        split=ns.split,
        limit=ns.limit,
    )
    tasks = preselect_queries(tasks, cfg)
    work = Path(ns.work_dir)
    embedder = None
    retrieved = {}
    for t in tasks:
        cached = work / f"{t.name}.{ns.split}.jsonl"
        if cached.is_file():
            runs, _ = read_candidates_jsonl(cached, t, top_n=cfg.hard_pool)
            if all(q.id in runs for q in t.queries):
                retrieved[t.name] = runs
                continue
        if ns.precomputed:
            pre = Path(ns.precomputed)
            runs = first_stage(
                t, "hash", top_n=cfg.hard_pool, precomputed=pre / f"{t.name}.jsonl" if pre.is_dir() else pre
            )
        else:
            embedder = embedder or make_embedder(ns.retriever)
            runs = first_stage(t, embedder, top_n=cfg.hard_pool, cache_dir=work / "cache", index=ns.index)
        write_candidates_jsonl(cached, runs)
        retrieved[t.name] = runs
    samples, stats = build_training_samples(tasks, retrieved, cfg)
    write_samples(ns.out, samples)
    stats_path = Path(str(ns.out) + ".stats.json")
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    for name, st in stats["tasks"].items():
        print(f"{name}: {st['samples']} samples (quota {st['quota']}, usable queries {st['usable_queries']})")
    print(f"{len(samples)} samples -> {ns.out}; statistics: {stats_path}")
    return 0


# ----------------------------------------------------------------------------- synthesize / rft


def _add_engine_args(p: argparse.ArgumentParser, engine_default: str, model_help: str) -> None:
    p.add_argument(
        "--engine",
        choices=ENGINE_KINDS,
        default=engine_default,
        help="oracle: a rule-based teacher writing synthetic trajectories from the ground truth (dry runs, "
        "CPU pipelines; teaches the format only)",
    )
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument(
        "--engine-args", help='engine settings as JSON, e.g. \'{"base_url": "http://localhost:8000/v1"}\''
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="samples jsonl (from `vretrver data samples`)")
    p.add_argument(
        "--out", required=True, help="output folder (trajectories.jsonl, images/, stats.json); resumable"
    )
    p.add_argument("--limit", type=int, help="use the first N samples")
    p.add_argument("--max-tool-calls", type=int, help="turn budget (default: the profile's, 2)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=64, help="samples per saved chunk")
    p.add_argument(
        "--require-full-ranking", action="store_true", help="also reject answers that omit candidates"
    )
    p.add_argument(
        "--min-tool-calls", type=int, default=0, help="also reject trajectories with fewer valid calls"
    )


def add_synthesize_args(p: argparse.ArgumentParser) -> None:
    _add_engine_args(
        p, "openai", "teacher model: the served name (openai) or a checkpoint folder (hf / vllm)"
    )
    _add_run_args(p)
    p.add_argument("--profile", default="annotation", help="teacher profile (default: annotation)")
    p.add_argument("--attempts", type=int, default=4, help="tries per sample (default 4)")
    p.add_argument("--keep-per-sample", type=int, default=1, help="kept trajectories per sample (default 1)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)


def add_rft_args(p: argparse.ArgumentParser) -> None:
    _add_engine_args(p, "vllm", "the SFT checkpoint folder (or the served name with --engine openai)")
    _add_run_args(p)
    p.add_argument("--profile", default="v-retrver")
    p.add_argument("--k", type=int, default=8, help="trajectories per sample (default 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="must be > 0 (default 1.0)")


def _load_samples(ns: argparse.Namespace):
    from vretrver.samples import read_samples

    samples = read_samples(ns.samples)
    return samples[: ns.limit] if ns.limit else samples


def _make_engine(ns: argparse.Namespace, samples: list[Any] | None = None):
    from vretrver.engines.factory import make_engine

    kw = json_object_option(ns.engine_args, "--engine-args")
    if ns.engine == "oracle":  # it answers from the ground truth of the very samples it runs on
        kw = {"samples": samples, "profile": ns.profile, "max_tool_calls": ns.max_tool_calls, **kw}
        kw.setdefault("seed", ns.seed)
    return make_engine(ns.engine, ns.model, **kw)


def cmd_synthesize(ns: argparse.Namespace) -> int:
    from vretrver.sft.filter import FilterConfig
    from vretrver.sft.synthesis import SynthesisConfig, synthesize

    samples = _load_samples(ns)
    cfg = SynthesisConfig(
        profile=ns.profile,
        attempts=ns.attempts,
        keep_per_sample=ns.keep_per_sample,
        max_tool_calls=ns.max_tool_calls,
        chunk_size=ns.chunk_size,
        temperature=ns.temperature,
        top_p=ns.top_p,
        max_new_tokens=ns.max_new_tokens,
        seed=ns.seed,
        filter=FilterConfig(require_full_ranking=ns.require_full_ranking, min_tool_calls=ns.min_tool_calls),
    )
    engine = _make_engine(ns, samples)
    try:
        synthesize(samples, engine, ns.out, cfg)
    finally:
        engine.close()
    print(f"trajectories: {Path(ns.out) / 'trajectories.jsonl'}; statistics: {Path(ns.out) / 'stats.json'}")
    return 0


def cmd_rft(ns: argparse.Namespace) -> int:
    from vretrver.sft.filter import FilterConfig
    from vretrver.sft.synthesis import rejection_sample

    samples = _load_samples(ns)
    engine = _make_engine(ns, samples)
    try:
        stats = rejection_sample(
            samples,
            engine,
            ns.out,
            k=ns.k,
            temperature=ns.temperature,
            seed=ns.seed,
            profile=ns.profile,
            max_tool_calls=ns.max_tool_calls,
            max_new_tokens=ns.max_new_tokens,
            chunk_size=ns.chunk_size,
            filter=FilterConfig(
                require_full_ranking=ns.require_full_ranking, min_tool_calls=ns.min_tool_calls
            ),
        )
    finally:
        engine.close()
    print(
        f"acceptance rate: {stats['all']['acceptance_rate']:.3f} ({stats['all']['accepted']} / {stats['all']['tried']})"
    )
    return 0


# ----------------------------------------------------------------------------- export


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", nargs="+", required=True, help="run folders or trajectories.jsonl files")
    p.add_argument(
        "--data-dir",
        default="LLaMA-Factory/data",
        help="LLaMA-Factory dataset_dir (default: LLaMA-Factory/data)",
    )
    p.add_argument("--name", default="vretrver_sft", help="dataset name (default: vretrver_sft)")
    p.add_argument(
        "--model",
        help="student checkpoint: counts tokens against --cutoff-len and sets the crop-box convention",
    )
    from vretrver.tools import COORDINATES

    p.add_argument("--coordinates", choices=COORDINATES, help="crop-box convention (default: as recorded)")
    p.add_argument("--profile", help="export profile (default: each record's export profile, v-retrver)")
    p.add_argument("--cutoff-len", type=int, default=32768)
    p.add_argument("--image-max-pixels", type=int, default=2_000_000)
    p.add_argument("--image-min-pixels", type=int, default=32 * 32)
    p.add_argument("--over-cutoff", choices=("drop", "keep"), default="drop")
    p.add_argument(
        "--all-records", action="store_true", help="export rejected records too (not for training)"
    )
    p.add_argument("--absolute-paths", action="store_true", help="list tool images by absolute path")


def cmd_export(ns: argparse.Namespace) -> int:
    from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory

    cfg = ExportConfig(
        name=ns.name,
        profile=ns.profile,
        coordinates=ns.coordinates,
        model=ns.model,
        cutoff_len=ns.cutoff_len,
        image_max_pixels=ns.image_max_pixels,
        image_min_pixels=ns.image_min_pixels,
        over_cutoff=ns.over_cutoff,
        only_kept=not ns.all_records,
        absolute_paths=ns.absolute_paths,
    )
    report = export_llamafactory(ns.records, ns.data_dir, cfg)
    over = report["over_cutoff_len"]
    print(
        f"{report['rows']} rows ({report['images']} images) -> {report['file']}; "
        f"dropped {report['dropped'] or 'none'}; over cutoff_len {over['count']} ({over['policy']}); "
        f"tokens {report['tokens']}"
    )
    return 0


# ----------------------------------------------------------------------------- wiring

COMMANDS = {
    "samples": (
        "training rerank samples: positive + K-1 hard negatives from a first stage",
        add_samples_args,
        cmd_samples,
    ),
    "synthesize": (
        "teacher trajectories (SFT data): episodes, rule filter, statistics",
        add_synthesize_args,
        cmd_synthesize,
    ),
    "rft": (
        "rejection sampling (RFT data): k trajectories per sample from the SFT model",
        add_rft_args,
        cmd_rft,
    ),
    "export": (
        "trajectories -> LLaMA-Factory sharegpt dataset + dataset_info.json",
        add_export_args,
        cmd_export,
    ),
}


def add_subcommands(subparsers: Any) -> None:
    """Register ``vretrver data samples|synthesize|rft|export``."""
    data = subparsers.add_parser(
        "data",
        help="build SFT / RFT training data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = data.add_subparsers(dest="data_command", required=True)
    for name, (help_text, add_args, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=func)


def run_command(name: str, argv: Sequence[str] | None = None) -> int:
    """Run one data command as a standalone script (``data_tools/*.py``)."""
    help_text, add_args, func = COMMANDS[name]
    p = argparse.ArgumentParser(description=help_text)
    add_args(p)
    ns = p.parse_args(argv)
    try:
        return func(ns) or 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
