"""``vretrver rl data build`` / ``vretrver rl data validate``: the RL parquet for verl."""

from __future__ import annotations

import argparse
import sys


def family_choices() -> dict[str, str]:
    """``--model-family`` values and the crop convention each one sets: every registered family's name,
    and the conventions themselves."""
    from vretrver.families import families
    from vretrver.tools import COORDINATES

    return {**{f.name: f.coordinates for f in families()}, **{c: c for c in COORDINATES}}


def family_of_model(path: str) -> str:
    """The crop-coordinate convention of a checkpoint, from its family (config.json model_type)."""
    from vretrver.families import family_of_checkpoint

    try:
        return family_of_checkpoint(path).coordinates
    except ValueError as e:
        raise SystemExit(f"--model: {e}") from None


def cmd_build(ns: argparse.Namespace) -> int:
    from vretrver.integrations.verl.dataset import (
        RLDataConfig,
        RLDataError,
        validate_rl_parquet,
        write_rl_parquet,
    )
    from vretrver.samples import SampleError, iter_samples

    family = (
        family_choices()[ns.model_family]
        if ns.model_family
        else (family_of_model(ns.model) if ns.model else "qwen2.5-vl")
    )
    try:
        cfg = RLDataConfig(
            profile=ns.profile,
            coordinates=family,
            max_tool_calls=ns.max_tool_calls,
            image_mode=ns.image_mode,
            max_candidates=ns.max_candidates,
            shuffle_candidates=ns.shuffle_candidates,
            seed=ns.seed,
            data_source=ns.data_source,
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None

    def samples():
        n = 0
        for path in ns.samples:
            for s in iter_samples(path):
                if ns.limit is not None and n >= ns.limit:
                    return
                n += 1
                yield s

    try:
        report = write_rl_parquet(ns.out, samples(), cfg, source=",".join(ns.samples), progress=not ns.quiet)
        stats = validate_rl_parquet(ns.out)
    except (SampleError, RLDataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(
        f"{ns.out}: {stats['rows']} rows, {stats.get('images', 0)} images ({cfg.image_mode}), "
        f"profile {cfg.profile}, {family} coordinates"
    )
    return 0


def cmd_validate(ns: argparse.Namespace) -> int:
    from vretrver.integrations.verl.dataset import RLDataError, validate_rl_parquet

    status = 0
    for path in ns.files:
        try:
            stats = validate_rl_parquet(path, decode_images=ns.decode_images)
        except RLDataError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        print(f"{path}: ok, " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return status


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    rl = subparsers.add_parser("rl", help="RL stage helpers (verl)")
    rl_sub = rl.add_subparsers(dest="rl_command", required=True)
    data = rl_sub.add_parser("data", help="the RL parquet verl reads")
    data_sub = data.add_subparsers(dest="rl_data_command", required=True)

    p = data_sub.add_parser("build", help="sample jsonl files -> RL parquet (validated)")
    p.add_argument("samples", nargs="+", help="sample jsonl files (query, candidates, positives)")
    p.add_argument("--out", required=True, help="output parquet file")
    p.add_argument(
        "--profile",
        default="v-retrver",
        help="prompt profile name or folder (default: v-retrver; text-cot for the RL-without-tools ablation)",
    )
    fam = p.add_mutually_exclusive_group()
    fam.add_argument(
        "--model-family",
        choices=sorted(family_choices()),
        help="the policy's family: sets the crop "
        "coordinate convention in the tool schema (default: qwen2.5-vl)",
    )
    fam.add_argument("--model", help="read the family from this checkpoint's config.json")
    p.add_argument("--max-tool-calls", type=int, help="tool budget per sample (default: the profile's, 2)")
    p.add_argument(
        "--image-mode",
        choices=("bytes", "path"),
        default="bytes",
        help="bytes: images inside the parquet (default); path: absolute paths (shared file system)",
    )
    p.add_argument(
        "--max-candidates",
        type=int,
        help="keep the first K candidates (a positive outside them "
        "replaces the K-th); the paper ranks K=20 per call",
    )
    p.add_argument(
        "--shuffle-candidates", action="store_true", help="shuffle each sample's candidates (seeded)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-source", help="data_source column (default: vretrver/<dataset>)")
    p.add_argument("--limit", type=int, help="at most this many samples")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build)

    p = data_sub.add_parser("validate", help="check RL parquet files row by row")
    p.add_argument("files", nargs="+")
    p.add_argument("--decode-images", action="store_true", help="also open every image")
    p.set_defaults(func=cmd_validate)
