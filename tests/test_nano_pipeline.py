"""V-Retrver-nano's training run (local_scripts/run_nano.sh): the summary it writes. The README's small run
of the whole script is run by tests/test_pipeline.py, beside the training chains."""

from __future__ import annotations

import json
from pathlib import Path

from vretrver.nano.pipeline import collect


def _eval(folder: Path, first: float, reranked: float, n: int = 10) -> None:
    folder.mkdir(parents=True)
    entry = {"n_queries": n, "metric": "R@1", "first_stage": {"R@1": first}, "reranked": {"R@1": reranked}}
    (folder / "summary.json").write_text(json.dumps({"tasks": {"nano_colour": entry}}))


def test_summary_reports_r1_and_the_checks(tmp_path: Path) -> None:
    _eval(tmp_path / "eval_tools", 0.2, 0.9)
    _eval(tmp_path / "eval_no_tools", 0.2, 0.2)
    (tmp_path / "sft").mkdir()
    log = [{"current_steps": 10, "loss": 5.0}, {"current_steps": 20, "loss": 0.5}]
    (tmp_path / "sft" / "trainer_log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    (tmp_path / "sft" / "train_results.json").write_text(json.dumps({"train_runtime": 40.0}))
    s = collect(tmp_path)
    assert s["R@1"] == {"first_stage": 0.2, "sft_with_tools": 0.9, "sft_without_tools": 0.2}
    assert s["crops"] is None  # no warm-up on crops in this run
    assert s["sft"] == {
        "steps": 20,
        "first_loss": 5.0,
        "last_loss": 0.5,
        "train_runtime_s": 40.0,
        "seconds_per_step": 2.0,
    }
    checks = s["checks"]
    assert checks["checkpoint"] == "sft" and checks["rl_mean_reward_rising"] is None
    assert checks["R@1_with_tools_at_least_0.8"] and checks["R@1_with_tools_above_first_stage"]
    assert checks["tools_disabled_at_least_0.1_lower"]
    assert "Synthetic benchmark" in s["note"]
    # With an RL checkpoint evaluated, the checks are about it; the reward is read per step.
    _eval(tmp_path / "eval_rl_tools", 0.2, 0.7)
    _eval(tmp_path / "eval_rl_no_tools", 0.2, 0.65)
    rollouts = tmp_path / "rl" / "rollouts"
    rollouts.mkdir(parents=True)
    for step, score in ((1, 0.2), (2, 0.5)):
        (rollouts / f"{step}.jsonl").write_text(json.dumps({"score": score}) + "\n")
    checks = collect(tmp_path)["checks"]
    assert checks["checkpoint"] == "rl" and checks["rl_mean_reward_rising"]
    assert not checks["R@1_with_tools_at_least_0.8"] and not checks["tools_disabled_at_least_0.1_lower"]


def test_rl_reward_rising_compares_the_halves_not_two_steps(tmp_path: Path) -> None:
    _eval(tmp_path / "eval_rl_tools", 0.2, 0.9)
    _eval(tmp_path / "eval_rl_no_tools", 0.2, 0.2)
    rollouts = tmp_path / "rl" / "rollouts"
    rollouts.mkdir(parents=True)
    # The last step beats the first, but the second half's mean (0.25) is below the first half's (0.5).
    for step, score in enumerate((0.1, 0.9, 0.2, 0.3), 1):
        (rollouts / f"{step}.jsonl").write_text(json.dumps({"score": score}) + "\n")
    assert collect(tmp_path)["checks"]["rl_mean_reward_rising"] is False


def test_summary_counts_the_crops_each_checkpoint_asks_for(tmp_path: Path) -> None:
    """RL under the EAPO reward (0.1 less per valid call beyond the first) should ask for fewer crops: the
    summary reports valid tool calls per query for each evaluation."""
    for name, crops in (("eval_tools", [5, 5]), ("eval_rl_tools", [1, 3])):
        _eval(tmp_path / name, 0.2, 0.9, n=2)
        (tmp_path / name / "trajectories").mkdir()
        episodes = [
            {"turns": [{"role": "tool", "tool": {"valid": True}}] * n + [{"role": "tool", "tool": {}}]}
            for n in crops
        ]
        lines = "".join(json.dumps(e) + "\n" for e in episodes)
        (tmp_path / name / "trajectories" / "nano_colour.jsonl").write_text(lines)
    evals = collect(tmp_path)["eval"]
    assert evals["sft_with_tools"]["crops_per_query"] == 5.0
    assert evals["rl_with_tools"]["crops_per_query"] == 2.0  # the invalid call is not a crop


def test_rl_stage_trains_the_actor_and_samples_in_fp32() -> None:
    """run_nano.sh's RL settings (``rl-args``) on top of the recipe, composed and validated as verl does: the
    actor's weights, its forward pass and vLLM's sampling in fp32 (the recipe keeps the release's bf16
    actor, right for the 7B model; in bf16 the nano model's updates of lr 1e-4 are rounded away)."""
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from vretrver.nano.pipeline import rl_args

    configs = Path(__file__).resolve().parent.parent / "EasyR1" / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        recipe = compose(config_name="qwen2_5_vl_7b_rl")
        cfg = compose(config_name="qwen2_5_vl_7b_rl", overrides=rl_args(20))
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert recipe.actor_rollout_ref.actor.fsdp_config.model_dtype == "bfloat16"
    fsdp = cfg.actor_rollout_ref.actor.fsdp_config
    assert fsdp.model_dtype == "fp32" and cfg.actor_rollout_ref.rollout.dtype == "float32"
    assert dict(fsdp.mixed_precision) == {
        "param_dtype": "fp32",
        "reduce_dtype": "fp32",
        "buffer_dtype": "fp32",
    }
    assert cfg.trainer.save_freq == 20 and cfg.actor_rollout_ref.actor.optim.lr == 1e-4


def test_rl_args_command_prints_the_overrides_on_one_line(capsys) -> None:
    from vretrver.nano.pipeline import main, rl_args

    assert main(["rl-args", "--steps", "7"]) == 0
    assert capsys.readouterr().out.split() == rl_args(7)
