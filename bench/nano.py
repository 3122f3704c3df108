"""V-Retrver-nano: R@1 on the nano test split with tools against tools disabled, and SFT against SFT+RL.

    python bench/nano.py                            # the checkpoints of runs/nano (bash local_scripts/run_nano.sh)
    python bench/nano.py --run /tmp/nano --n 50     # another run folder, fewer queries
    python bench/nano.py --sft DIR [--rl DIR]       # any checkpoints

Every checkpoint is evaluated in this one process on the same queries (the hash first stage, the
transformers engine, greedy decoding): with a crop per candidate allowed (tool budget k) and with a tool
budget of 0 (the first tool call ends the episode: the first stage's order stands). The ratios are
R@1 with tools / without, and SFT+RL / SFT (R@1, and the crops a query the checkpoint asks for: the
EAPO reward pays for fewer tool calls). A synthetic benchmark: the numbers say what zooming is worth
where the deciding detail is too small for the model's input, not how the method does on real data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vretrver.evaluate import EvalConfig, evaluate  # noqa: E402
from vretrver.nano.pipeline import NANO_PROFILE  # noqa: E402
from vretrver.sft.pipeline import turn_rates  # noqa: E402


def r1(
    model: str, budget: int, n: int, tasks: list[str], k: int, work: Path
) -> tuple[float, float, float, float]:
    """(first-stage R@1, reranked R@1, crops per query, seconds) over the first ``n`` test queries of
    each task."""
    cfg = EvalConfig(
        benchmark="nano",
        tasks=tasks,
        split="test",
        limit=n,
        retriever="hash",
        reranker=model,
        engine="hf",
        max_tool_calls=budget,
        max_new_tokens=96,
        top_n=k,
        window=k,
        reader_args={"k": k},
        profile=NANO_PROFILE,  # what run_nano.sh trains with
    )
    t = time.perf_counter()
    out = work / f"{Path(model).name}-{budget}"
    _, summary = evaluate(cfg, out, progress=False)
    seconds = time.perf_counter() - t
    crops = turn_rates([out / "trajectories"])["valid_calls_per_episode"]
    entries = list(summary["tasks"].values())
    total = sum(e["n_queries"] for e in entries)

    def mean(key: str) -> float:
        return sum(e[key]["R@1"] * e["n_queries"] for e in entries) / total

    return mean("first_stage"), mean("reranked"), crops, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/nano", help="a run_nano.sh folder (its sft and rl/hf/latest)")
    ap.add_argument("--sft", help="the SFT checkpoint (default RUN/sft)")
    ap.add_argument("--rl", help="the SFT+RL checkpoint (default RUN/rl/hf/latest when it exists)")
    ap.add_argument("--n", type=int, default=100, help="test queries per task (default 100)")
    ap.add_argument("--tasks", default="nano_colour")
    ap.add_argument("--k", type=int, default=5, help="candidates per query (default 5)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    sft = args.sft or str(Path(args.run) / "sft")
    rl = args.rl or (
        str(Path(args.run) / "rl/hf/latest") if (Path(args.run) / "rl/hf/latest").exists() else None
    )
    if not Path(sft, "config.json").is_file():
        sys.exit(f"no SFT checkpoint at {sft}: run bash local_scripts/run_nano.sh, or pass --sft")
    tasks = args.tasks.split(",")
    print(f"nano test split, {args.n} queries per task of {tasks}, k={args.k} (chance R@1 {1 / args.k:.2f})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-nano-") as tmp:
        for name, model in (("SFT", sft), ("SFT+RL", rl)):
            if model is None:
                continue
            first, tools, crops, t1 = r1(model, args.k, args.n, tasks, args.k, Path(tmp))
            _, no_tools, _, t0 = r1(model, 0, args.n, tasks, args.k, Path(tmp))
            rows.append((name, tools, crops))
            ratio = f"{tools / no_tools:.2f}x" if no_tools else "inf"
            print(
                f"{name:7s} R@1 with tools {tools:.3f} ({crops:.2f} crops a query, {t1:.0f} s)"
                f" | without {no_tools:.3f} ({t0:.0f} s) | first stage {first:.3f}"
                f" | with / without tools {ratio}"
            )
    if len(rows) == 2:
        (_, a, crops_a), (_, b, crops_b) = rows
        print(f"SFT+RL / SFT R@1 with tools: {b / a:.2f}x" if a else "SFT R@1 is 0")
        print(f"SFT+RL / SFT crops a query: {crops_b / crops_a:.2f}x" if crops_a else "SFT made no crop")
    else:
        print("SFT+RL: no RL checkpoint (run_nano.sh with RL_STEPS > 0 and .venv-rl-cpu)")


if __name__ == "__main__":
    main()
