"""The steps of ``local_scripts/run_nano.sh`` that have no command of their own, and its summary.

    python -m vretrver.nano.pipeline synthesize --samples S --out DIR [--max-tool-calls K] [--profile P]
            [--stop-share F]
        NanoTeacher trajectories for nano samples (from ``vretrver data samples --benchmark nano``),
        through the same synthesis, filter and record files as ``vretrver data synthesize``
    python -m vretrver.nano.pipeline crops --data-dir LF_DATA [--source nano_sft] [--name nano_crops]
        warm-up rows: each crop of the exported trajectories alone, then the teacher's sentence naming it
        (:mod:`vretrver.nano.warmup`), registered beside the trajectories' dataset
    python -m vretrver.nano.pipeline rl-args --steps N
        the verl overrides of the RL stage when ``RL_ARGS`` is not set (:func:`rl_args`)
    python -m vretrver.nano.pipeline summary OUT
        OUT/summary.json: settings, stage times, the loss of the warm-up on crops and of the SFT, R@1 of the first stage, of the reranker with
        tools and with tools disabled (and of the RL checkpoint), the RL reward per step, and the checks
        the nano benchmark is meant to pass

Every number is measured on the synthetic nano benchmark (:mod:`vretrver.nano.data`), not on a real one.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vretrver.integrations.verl.cpu_overrides import CPU_PROCESS_OVERRIDES
from vretrver.samples import atomic_write_text
from vretrver.sft.pipeline import MARKERS, read_json, rl_steps

NOTE = (
    "Synthetic benchmark (V-Retrver-nano): generated images whose deciding mark is lost at the nano model's "
    "56x56 input unless it crops. 'without tools' is the same checkpoint with a tool budget of 0: its first "
    "tool call ends the episode, so the ranking falls back to the first stage's."
)
# The prompt profile of the nano run: the v-retrver tools and turns with a short system prompt, so the
# colour a crop shows and the name the model writes for it sit close together.
NANO_PROFILE = "nano"
# evaluation folder -> label in the summary
EVALS = {
    "eval_tools": "sft_with_tools",
    "eval_no_tools": "sft_without_tools",
    "eval_rl_tools": "rl_with_tools",
    "eval_rl_no_tools": "rl_without_tools",
}


def synthesize_nano(
    samples_path: str | os.PathLike,
    out: str | os.PathLike,
    max_tool_calls: int,
    profile: str = NANO_PROFILE,
    stop_share: float = 0.0,
) -> dict:
    """NanoTeacher trajectories (one per sample) written like ``vretrver data synthesize`` writes them,
    rendered (and later exported) with ``profile``; ``stop_share`` of them answer at the match."""
    from vretrver.nano.data import tool_config
    from vretrver.nano.teacher import NanoTeacher
    from vretrver.samples import read_samples
    from vretrver.sft import SynthesisConfig, synthesize

    samples = read_samples(samples_path)
    teacher = NanoTeacher(
        samples=samples,
        profile=profile,
        max_tool_calls=max_tool_calls,
        tool_config=tool_config(),
        stop_share=stop_share,
    )
    cfg = SynthesisConfig(profile=profile, attempts=1, max_tool_calls=max_tool_calls)
    return synthesize(samples, teacher, out, cfg)


def rl_args(steps: int) -> list[str]:
    """The verl overrides ``run_nano.sh`` trains with when ``RL_ARGS`` is not set: one process on a CPU
    (:data:`CPU_PROCESS_OVERRIDES`), room for k crops, 4 prompts x 4 rollouts a step, the actor's learning
    rate, fp32."""
    args = [
        *CPU_PROCESS_OVERRIDES,
        "data.train_batch_size=4",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "data.max_prompt_length=1024",
        "data.max_response_length=1536",
        # The nano prompts are about 150 tokens; checking each rendered prompt against the limit took
        # minutes of the stage.
        "data.filter_overlong_prompts=False",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
        "trainer.test_freq=-1",
        f"trainer.save_freq={steps}",
        "actor_rollout_ref.actor.optim.lr=1e-4",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        # fp32 as in the SFT stage: the recipe's bf16 actor weights (the release's setting for the 7B model)
        # round updates of this size away, and bf16 sampling moved some of the nano model's token
        # probabilities by up to 0.65 from the actor's (0.004 in fp32).
        "actor_rollout_ref.actor.fsdp_config.model_dtype=fp32",
        "actor_rollout_ref.rollout.dtype=float32",
    ]
    mixed = ("param_dtype", "reduce_dtype", "buffer_dtype")
    return args + [f"++actor_rollout_ref.actor.fsdp_config.mixed_precision.{k}=fp32" for k in mixed]


def _sft_log(folder: Path) -> dict[str, Any] | None:
    """Loss at the first and last logged steps and the training time, from LLaMA-Factory's trainer log."""
    path = folder / "trainer_log.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [r for r in rows if "loss" in r]
    if not losses:
        return None
    results = read_json(folder / "train_results.json") or {}
    runtime = results.get("train_runtime")
    steps = losses[-1].get("current_steps")
    return {
        "steps": steps,
        "first_loss": losses[0]["loss"],
        "last_loss": losses[-1]["loss"],
        "train_runtime_s": runtime,
        "seconds_per_step": round(runtime / steps, 3) if runtime and steps else None,
    }


def _evaluation(folder: Path) -> dict[str, Any] | None:
    from vretrver.sft.pipeline import turn_rates

    summary = read_json(folder / "summary.json")
    if summary is None:
        return None
    out: dict[str, Any] = {"tasks": {}}
    for task, entry in summary["tasks"].items():
        out["tasks"][task] = {
            "n_queries": entry["n_queries"],
            "first_stage_R@1": entry["first_stage"]["R@1"],
            "reranked_R@1": entry["reranked"]["R@1"],
        }
    if (folder / "trajectories").is_dir():
        rates = turn_rates([folder / "trajectories"])
        out["well_formed_turn_rate"] = rates.get("well_formed_turn_rate")
        out["answered_rate"] = rates.get("answered_rate")
        out["crops_per_query"] = rates.get("valid_calls_per_episode")
    return out


def _r1(evaluation: dict[str, Any] | None, key: str = "reranked_R@1") -> float | None:
    """R@1 averaged over the tasks (weighted by queries)."""
    if not evaluation or not evaluation["tasks"]:
        return None
    tasks = evaluation["tasks"].values()
    n = sum(t["n_queries"] for t in tasks)
    return round(sum(t[key] * t["n_queries"] for t in tasks) / n, 4) if n else None


def collect(out: str | os.PathLike) -> dict[str, Any]:
    """Everything ``summary.json`` reports, read from the run folder."""
    out = Path(out)
    stages = {}
    for marker in sorted((out / MARKERS).glob("*.json")):
        stages[marker.stem] = read_json(marker)
    summary: dict[str, Any] = {"note": NOTE, "settings": read_json(out / "settings.json") or {}}
    summary["stages"] = stages
    teacher = read_json(out / "data" / "teacher" / "stats.json")
    if teacher:
        summary["teacher"] = {
            "kept": teacher["all"]["kept"],
            "acceptance_rate": teacher["all"]["acceptance_rate"],
        }
    summary["crops"] = _sft_log(out / "crops")  # the warm-up on crops alone (None when skipped)
    summary["sft"] = _sft_log(out / "sft")
    evals = {label: _evaluation(out / name) for name, label in EVALS.items()}
    summary["eval"] = {k: v for k, v in evals.items() if v is not None}
    steps = rl_steps(out / "rl" / "rollouts")
    if steps:
        summary["rl"] = {"steps": steps}
    r1 = {label: _r1(e) for label, e in summary["eval"].items()}
    first = _r1(evals.get("sft_with_tools"), "first_stage_R@1")
    summary["R@1"] = {"first_stage": first, **r1}
    summary["checks"] = _checks(first, r1, steps)
    return summary


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _checks(first: float | None, r1: dict[str, float | None], steps: list[dict[str, float]]) -> dict:
    """What the nano benchmark is meant to show, each True / False (None: not measured in this run)."""
    best = "rl" if r1.get("rl_with_tools") is not None else "sft"
    tools, no_tools = r1.get(f"{best}_with_tools"), r1.get(f"{best}_without_tools")

    def known(*xs: float | None) -> bool:
        return all(x is not None for x in xs)

    rewards = [s["score"] for s in steps if "score" in s]
    return {
        "checkpoint": best,
        "R@1_with_tools_at_least_0.8": tools >= 0.8 if known(tools) else None,
        "R@1_with_tools_above_first_stage": tools > first if known(tools, first) else None,
        "tools_disabled_at_least_0.1_lower": tools - no_tools >= 0.1 if known(tools, no_tools) else None,
        # Halves, not the first and last step: one step's mean over a few rollouts is noisy.
        "rl_mean_reward_rising": _mean(rewards[len(rewards) // 2 :]) > _mean(rewards[: len(rewards) // 2])
        if len(rewards) >= 2
        else None,
    }


def write_summary(out: str | os.PathLike) -> dict[str, Any]:
    summary = collect(out)
    atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vretrver.nano.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synthesize", help="NanoTeacher trajectories for nano samples")
    p.add_argument("--samples", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-tool-calls", type=int, default=5, help="crops per episode (at least k)")
    p.add_argument("--profile", default=NANO_PROFILE, help=f"prompt profile (default: {NANO_PROFILE})")
    p.add_argument(
        "--stop-share",
        type=float,
        default=0.0,
        help="share of the samples whose trajectory answers at the match instead of cropping every candidate",
    )
    p = sub.add_parser("crops", help="warm-up rows: each crop of the exported trajectories, then its name")
    p.add_argument("--data-dir", required=True, help="the LLaMA-Factory dataset folder of the export")
    p.add_argument("--source", default="nano_sft", help="the trajectories' dataset (default: nano_sft)")
    p.add_argument("--name", default="nano_crops", help="the warm-up dataset (default: nano_crops)")
    p = sub.add_parser("rl-args", help="the verl overrides of the RL stage, on one line")
    p.add_argument("--steps", type=int, required=True, help="RL steps (a checkpoint at the last)")
    p = sub.add_parser("summary", help="write OUT/summary.json")
    p.add_argument("out")
    ns = parser.parse_args(argv)
    if ns.command == "synthesize":
        stats = synthesize_nano(ns.samples, ns.out, ns.max_tool_calls, ns.profile, ns.stop_share)
        print(f"kept {stats['all']['kept']} trajectories -> {ns.out}")
    elif ns.command == "rl-args":
        print(" ".join(rl_args(ns.steps)))
    elif ns.command == "crops":
        from vretrver.nano.warmup import write_crop_dataset

        n = write_crop_dataset(ns.data_dir, ns.source, ns.name)
        print(f"{n} crop rows -> {Path(ns.data_dir) / ns.name}.json")
    else:
        summary = write_summary(ns.out)
        print(json.dumps({"R@1": summary["R@1"], "checks": summary["checks"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
