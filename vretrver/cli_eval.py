"""``vretrver eval``: its options are made from :class:`~vretrver.evaluation.config.EvalConfig`'s fields.

A run's settings come from, each overriding the one before: the defaults, ``--config FILE`` (yaml or json;
a result folder's ``config.json`` is one), the options given, and ``key=value`` words after them::

    vretrver eval --config run.yaml top_n=20 engine_args=device=cuda,dtype=bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vretrver.evaluation.config import EvalConfig
from vretrver.options import add_options, read_file, settings

# The reranking options `vretrver rerank` shares with `vretrver eval`.
RERANK_OPTIONS = (
    "engine",
    "engine_args",
    "profile",
    "max_tool_calls",
    "temperature",
    "max_new_tokens",
    "seed",
)
# Keys a --config file may hold beside the settings.
RUN_KEYS = ("out",)
MASKED = "***"
DESCRIPTION = """Score a first stage (and a reranker) on a benchmark.

The settings come from, each overriding the one before: the defaults, --config FILE (yaml or json; a
result folder's config.json is one), the options given, and KEY=VALUE words after them (field names,
dashes or underscores), e.g.

    vretrver eval --config run.yaml --out runs/x top_n=20 engine_args=device=cuda,dtype=bfloat16
"""  # how config.json writes a secret engine argument


def reader_flags() -> dict[str, str]:
    """Reader arguments with a flag of their own (``image_dir`` -> ``--image-dir``), from the benchmark
    specs: argument -> help (the help of every benchmark that takes it)."""
    from vretrver.benchmarks.registry import specs

    flags: dict[str, list[str]] = {}
    for spec in specs():
        for arg, text in spec.reader_options.items():
            flags.setdefault(arg, []).append(text)
    return {arg: "; ".join(texts) for arg, texts in flags.items()}


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    add_options(p, EvalConfig, RERANK_OPTIONS)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a first stage (and a reranker) on a benchmark; print the tables",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the run's settings as yaml or json (a result folder's config.json is one); the options and "
        "KEY=VALUE words given with it override it",
    )
    add_options(p, EvalConfig, [n for n in EvalConfig.__dataclass_fields__ if n not in RERANK_OPTIONS])
    for arg, text in reader_flags().items():
        p.add_argument(f"--{arg.replace('_', '-')}", help=text)
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
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="settings over the file and the options, by field name: top_n=20, tasks=a,b, "
        "engine_args=device=cuda,dtype=bfloat16",
    )
    p.set_defaults(func=cmd_eval)


def eval_config(ns: argparse.Namespace) -> tuple[EvalConfig, str | None]:
    """The run's settings from the parsed command line (and its --config file), and the result folder."""
    from vretrver.protocol.profile import checkpoint_profile

    file_values: dict[str, Any] = {}
    if ns.config:
        file_values = read_file(ns.config)
        file_values.pop("fingerprint", None)  # config.json: derived from the settings, not one of them
        file_values = _unmask(file_values, ns.config)
    values, extra = settings(
        EvalConfig, ns, file_values, ns.overrides, source=ns.config or "", extra_keys=RUN_KEYS
    )
    reader_args = dict(values.get("reader_args") or {})
    for key in reader_flags():
        value = getattr(ns, key, None)
        if value is not None:
            if key in reader_args and reader_args[key] != value:
                raise SystemExit(f"--{key.replace('_', '-')} and --reader-args set {key!r} differently")
            reader_args[key] = value
    if reader_args:
        values["reader_args"] = reader_args
    if not values.get("benchmark"):
        raise ValueError("eval: --benchmark is required (or benchmark: in the --config file)")
    values["profile"] = checkpoint_profile(values.get("reranker"), values.get("profile"))
    return EvalConfig(**values), ns.out or extra.get("out")


def _unmask(values: dict[str, Any], path: str) -> dict[str, Any]:
    """Engine arguments config.json masked (API keys, tokens) are left out, with a note."""
    engine_args = values.get("engine_args")
    if not isinstance(engine_args, dict):
        return values
    masked = sorted(k for k, v in engine_args.items() if v == MASKED)
    if masked:
        print(
            f"[eval] {path}: {', '.join(masked)} masked in the file and left out; give them with "
            f"engine_args=... or the engine's environment variables",
            file=sys.stderr,
        )
    return {**values, "engine_args": {k: v for k, v in engine_args.items() if v != MASKED}}


def cmd_eval(ns: argparse.Namespace) -> int:
    from vretrver.evaluate import evaluate  # looked up at call time (tests replace it)
    from vretrver.protocol.profile import profile_mismatch_warning

    cfg, out = eval_config(ns)
    warning = profile_mismatch_warning(cfg.reranker, cfg.profile)
    if warning:
        print(warning, file=sys.stderr)
    if ns.dry_run:
        from vretrver.dryrun import dry_run

        print(dry_run(cfg, ns.rate))
        return 0
    if not out:
        raise ValueError("eval: --out is required (the result folder), unless --dry-run")
    out, summary = evaluate(cfg, out, progress=not ns.quiet)
    print((Path(out) / "summary.md").read_text())
    print(f"results: {out}")
    return 0
