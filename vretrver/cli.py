"""The ``vretrver`` command: eval, demo, rerank, view, and the data builders of the training stages."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

BENCHMARKS = ("mbeir", "tuxpaint", "circo", "genecis", "visdial", "vist", "mtfiq", "heldout")


def _engine_args(ns: argparse.Namespace) -> dict:
    args = {}
    if getattr(ns, "engine_args", None):
        try:
            args = json.loads(ns.engine_args)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--engine-args: expected a JSON object ({e.msg})") from None
        if not isinstance(args, dict):
            raise SystemExit("--engine-args: expected a JSON object")
    return args


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("hf", "vllm", "openai"), default="hf", help="inference engine (default: hf)")
    p.add_argument(
        "--engine-args",
        help='engine settings as JSON, e.g. \'{"device": "cuda", "dtype": "bfloat16"}\' or '
        '\'{"base_url": "http://localhost:8000/v1"}\'',
    )
    p.add_argument("--profile", default="v-retrver", help="prompt profile name or folder (default: v-retrver)")
    p.add_argument("--max-tool-calls", type=int, help="tool-call budget per window (default: the profile's, 2)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)


def cmd_eval(ns: argparse.Namespace) -> int:
    from vretrver.evaluate import EvalConfig, evaluate

    reranker = None if ns.reranker in (None, "none") else ns.reranker
    cfg = EvalConfig(
        benchmark=ns.benchmark,
        tasks=ns.tasks.split(",") if ns.tasks else None,
        data_root=ns.data_root,
        split=ns.split,
        limit=ns.limit,
        retriever=ns.retriever,
        reranker=reranker,
        engine=ns.engine,
        engine_args=_engine_args(ns),
        profile=ns.profile,
        top_n=ns.top_n,
        window=ns.window,
        stride=ns.stride,
        max_tool_calls=ns.max_tool_calls,
        temperature=ns.temperature,
        max_new_tokens=ns.max_new_tokens,
        seed=ns.seed,
        index=ns.index,
        chunk_queries=ns.chunk_queries,
        skip_missing=ns.skip_missing,
        cache_dir=ns.cache_dir,
    )
    out, summary = evaluate(cfg, ns.out, progress=not ns.quiet)
    print((out / "summary.md").read_text())
    print(f"results: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vretrver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="score a first stage (and a reranker) on a benchmark; print the tables")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--tasks", help="comma-separated task names (default: all of the benchmark)")
    p.add_argument("--data-root", help="the unpacked benchmark folder (not needed for tuxpaint)")
    p.add_argument("--split", help="benchmark split (default: the evaluation split)")
    p.add_argument("--limit", type=int, help="score only the first N queries of each task")
    p.add_argument(
        "--retriever", default="offline", help="offline | lamra[:MODEL] | precomputed:PATH (default: offline)"
    )
    p.add_argument("--reranker", default="none", help="checkpoint folder or hub id, 'tiny', or 'none' (default)")
    p.add_argument("--top-n", type=int, help="candidates to rerank (default: 50; 10 for the zero-shot sets)")
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--stride", type=int, default=10)
    p.add_argument("--index", default="flat", choices=("flat", "fp16", "ivfpq"), help="faiss index (default: flat)")
    p.add_argument("--chunk-queries", type=int, default=32, help="queries reranked and saved together")
    p.add_argument("--skip-missing", action="store_true", help="score what remains when image files are missing")
    p.add_argument("--cache-dir", help="embedding cache (default: OUT/cache)")
    p.add_argument("--out", required=True, help="result folder")
    p.add_argument("--quiet", action="store_true")
    add_rerank_options(p)
    p.set_defaults(func=cmd_eval)

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


if __name__ == "__main__":
    sys.exit(main())
