"""The ``vretrver`` command: eval, demo, rerank, view, and the data builders of the training stages."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vretrver.benchmarks.registry import names as benchmark_names


def json_object_option(text: str | None, flag: str, example: str = '{"key": 1}') -> dict:
    """The JSON object an option holds ({} when not given); a clear exit naming the option otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{flag}: expected a JSON object ({e.msg})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag}: expected a JSON object, e.g. '{example}'")
    return value


def _engine_args(ns: argparse.Namespace) -> dict:
    return json_object_option(getattr(ns, "engine_args", None), "--engine-args", '{"device": "cuda"}')


def reader_flags() -> dict[str, str]:
    """Reader arguments with a flag of their own (``image_dir`` -> ``--image-dir``), from the benchmark
    specs: argument -> help (the help of every benchmark that takes it)."""
    from vretrver.benchmarks.registry import specs

    flags: dict[str, list[str]] = {}
    for spec in specs():
        for arg, text in spec.reader_options.items():
            flags.setdefault(arg, []).append(text)
    return {arg: "; ".join(texts) for arg, texts in flags.items()}


def _reader_args(ns: argparse.Namespace) -> dict:
    """``--reader-args`` JSON merged with the reader options that have their own flag."""
    args = json_object_option(ns.reader_args, "--reader-args", '{"rounds": 3}')
    for key in reader_flags():
        value = getattr(ns, key, None)
        if value is not None:
            if key in args and args[key] != value:
                raise SystemExit(f"--{key.replace('_', '-')} and --reader-args set {key!r} differently")
            args[key] = value
    return args


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=("hf", "vllm", "openai"), default="hf", help="inference engine (default: hf)"
    )
    p.add_argument(
        "--engine-args",
        help='engine settings as JSON, e.g. \'{"device": "cuda", "dtype": "bfloat16"}\' or '
        '\'{"base_url": "http://localhost:8000/v1"}\'',
    )
    p.add_argument(
        "--profile",
        help="prompt profile name or folder (default: the one the checkpoint was trained on: official for "
        "the released V-Retrver checkpoints, v-retrver otherwise; official-original-01 / -02 are the "
        "release's other prompt variants)",
    )
    p.add_argument(
        "--max-tool-calls", type=int, help="tool-call budget per window (default: the profile's, 2)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)


def cmd_eval(ns: argparse.Namespace) -> int:
    from vretrver.evaluate import EvalConfig, evaluate
    from vretrver.protocol.profile import checkpoint_profile, profile_mismatch_warning

    reranker = None if ns.reranker in (None, "none") else ns.reranker
    cfg = EvalConfig(
        benchmark=ns.benchmark,
        tasks=ns.tasks.split(",") if ns.tasks else None,
        data_root=ns.data_root,
        split=ns.split,
        limit=ns.limit,
        pool=ns.pool,
        instruction=ns.instruction,
        reader_args=_reader_args(ns),
        retriever=ns.retriever,
        max_unresolved=ns.max_unresolved,
        parquet_prompts=ns.parquet_prompts,
        reranker=reranker,
        engine=ns.engine,
        engine_args=_engine_args(ns),
        profile=checkpoint_profile(reranker, ns.profile),
        top_n=ns.top_n,
        window=ns.window,
        stride=ns.stride,
        window_mode=ns.window_mode,
        max_tool_calls=ns.max_tool_calls,
        temperature=ns.temperature,
        max_new_tokens=ns.max_new_tokens,
        seed=ns.seed,
        index=ns.index,
        chunk_queries=ns.chunk_queries,
        scheduler=ns.scheduler,
        max_inflight=ns.max_inflight,
        skip_missing=ns.skip_missing,
        cache_dir=ns.cache_dir,
        ray_address=ns.ray_address,
        ray_workers=ns.ray_workers,
        retry_failed=ns.retry_failed,
    )
    warning = profile_mismatch_warning(reranker, cfg.profile)
    if warning:
        print(warning, file=sys.stderr)
    if ns.dry_run:
        from vretrver.dryrun import dry_run

        print(dry_run(cfg, ns.rate))
        return 0
    if not ns.out:
        raise ValueError("eval: --out is required (the result folder), unless --dry-run")
    out, summary = evaluate(cfg, ns.out, progress=not ns.quiet)
    print((out / "summary.md").read_text())
    print(f"results: {out}")
    return 0


def cmd_summarize(ns: argparse.Namespace) -> int:
    from vretrver.report.tables import collect_summaries
    from vretrver.samples import atomic_write_text

    text = collect_summaries(ns.root)
    atomic_write_text(Path(ns.root) / "summary.md", text)
    print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vretrver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score a first stage (and a reranker) on a benchmark; print the tables")
    p.add_argument("--benchmark", required=True, choices=benchmark_names())
    p.add_argument("--tasks", help="comma-separated task names (default: all of the benchmark)")
    p.add_argument("--data-root", help="the unpacked benchmark folder (not needed for tuxpaint)")
    p.add_argument("--split", help="benchmark split (default: the evaluation split)")
    p.add_argument("--limit", type=int, help="score only the first N queries of each task")
    p.add_argument(
        "--pool",
        default="local",
        choices=("local", "global", "lamra-global"),
        help="M-BEIR candidate pool: each task's own (default, the papers' tables); 'global', the union pool "
        "filtered by each query's candidate modality; 'lamra-global', LamRA's global setting (the 16 local "
        "pools concatenated, copies kept, no modality filter)",
    )
    p.add_argument(
        "--instruction",
        default="first",
        help="M-BEIR query instruction: 'first' of the task's list (default) or 'random[:SEED]', one drawn "
        "per query as LamRA does, seeded (default seed 0) so runs repeat",
    )
    for arg, text in reader_flags().items():
        p.add_argument(f"--{arg.replace('_', '-')}", help=text)
    p.add_argument(
        "--reader-args",
        help="more keyword arguments for the benchmark reader as JSON, e.g. '{\"rounds\": 3}' (visdial) or "
        '\'{"duplicates": "drop"}\' (genecis, mtfiq); an unknown key lists the ones the reader takes',
    )
    p.add_argument(
        "--retriever",
        default="offline",
        help="offline | lamra[:MODEL] | hash[:DIM] | precomputed:PATH (a .jsonl or .parquet candidate file; "
        "PATH may contain {task}) (default: offline)",
    )
    p.add_argument(
        "--reranker", default="none", help="checkpoint folder or hub id, 'tiny', or 'none' (default)"
    )
    p.add_argument("--top-n", type=int, help="candidates to rerank (default: 50; 10 for the zero-shot sets)")
    p.add_argument(
        "--window", type=int, help="candidates per reranking window (default: the benchmark's, 20)"
    )
    p.add_argument("--stride", type=int, default=10)
    p.add_argument(
        "--window-mode",
        default="ours",
        choices=("ours", "official"),
        help="ours (default): windows cover each list as it is; official: the release's fixed windows "
        "(30-49, 20-39, 10-29, 0-19), skipped where they do not fit a list, and only a bracketed answer "
        "reorders its window",
    )
    p.add_argument(
        "--max-unresolved",
        type=int,
        default=0,
        help="precomputed lists: how many entries may be lost (hits matching no pool candidate, unknown "
        "candidate or query ids, queries without a row) before the run stops (default: 0)",
    )
    p.add_argument(
        "--parquet-prompts",
        action="store_true",
        help="with a V-Retrver parquet as first stage: give each query its prompt from the file",
    )
    p.add_argument(
        "--index", default="flat", choices=("flat", "fp16", "ivfpq"), help="faiss index (default: flat)"
    )
    p.add_argument(
        "--chunk-queries",
        type=int,
        default=32,
        help="--scheduler rounds (and Ray): queries reranked and saved together (default: 32)",
    )
    p.add_argument(
        "--scheduler",
        default="continuous",
        choices=("continuous", "rounds"),
        help="continuous (default): each query and episode advances on its own, up to --max-inflight "
        "episodes in the engine, results saved as queries finish; rounds: one engine call per round of "
        "a chunk of queries. Greedy results are the same",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=64,
        help="--scheduler continuous: episodes in the engine at once (default: 64)",
    )
    p.add_argument(
        "--skip-missing", action="store_true", help="score what remains when image files are missing"
    )
    p.add_argument("--cache-dir", help="embedding cache (default: OUT/cache)")
    p.add_argument(
        "--ray-address",
        help="embed and rerank data-parallel on Ray: 'local' (start a local cluster), 'auto' (join the running "
        "one) or a cluster address; one actor per GPU holds an engine",
    )
    p.add_argument(
        "--ray-workers", type=int, help="Ray actors (default: one per GPU; CPU only: the CPUs, <= 8)"
    )
    p.add_argument(
        "--retry-failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resuming: rerank again the queries the engine failed on (default); --no-retry-failed keeps "
        "them as they are (their failed windows in first-stage order)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print queries, windows, model calls, images and the estimated time per task; load no model",
    )
    p.add_argument(
        "--rate",
        type=float,
        help="--dry-run: episodes (windows) per second of your engine (default: an assumed 2, see the output)",
    )
    p.add_argument("--out", help="result folder (required unless --dry-run)")
    p.add_argument("--quiet", action="store_true")
    add_rerank_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("summarize", help="one table over ROOT/<checkpoint>/<benchmark>/summary.json")
    p.add_argument("root")
    p.set_defaults(func=cmd_summarize)

    # Subcommands owned by other modules register themselves here (imported lazily on use).
    for module in ("vretrver.cli_demo", "vretrver.cli_data", "vretrver.cli_rl"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns) or 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # Bad input (a malformed line, a missing file, a wrong setting) is one line, not a traceback;
        # errors raised inside other libraries keep theirs. VRETRVER_DEBUG=1 shows every traceback.
        if os.environ.get("VRETRVER_DEBUG") or not _user_error(e):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _user_error(e: BaseException) -> bool:
    """Our input errors, or a ValueError / file error raised by our own code (not deep in a library)."""
    from vretrver.benchmarks.common import MissingDataError
    from vretrver.samples import SampleError

    if isinstance(e, SampleError | MissingDataError):
        return True
    if not isinstance(
        e, ValueError | FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError
    ):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    origin = Path(tb.tb_frame.f_code.co_filename).resolve() if tb is not None else None
    return origin is not None and Path(__file__).resolve().parent in origin.parents


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"  # not "[Errno 2] ..."
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
