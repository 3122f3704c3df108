"""Build the RL parquet for verl from sample jsonl files (see `vretrver rl data build --help`).

    python data_tools/build_rl_data.py data/rl/train_samples.jsonl --out data/rl/train.parquet \
        --model-family qwen2.5-vl --max-candidates 20
"""

from __future__ import annotations

import argparse
import sys

from vretrver.cli_rl import add_subcommands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_rl_data.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    ns = parser.parse_args(["rl", "data", "build", *(sys.argv[1:] if argv is None else argv)])
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
