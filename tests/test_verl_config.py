"""The RL recipes compose with verl's own hydra config and pass verl's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "EasyR1" / "configs"


def compose(name: str, overrides: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = hydra_compose(config_name=name, overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("name, patch", [("qwen2_5_vl_7b_rl", 14), ("qwen3_vl_8b_rl", 16)])
def test_recipe_composes_and_validates(name, patch, tiny_qwen25vl):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = compose(name, [f"actor_rollout_ref.model.path={tiny_qwen25vl}"])
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    # the paper's / public script's settings
    a, r = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and r.n == 8
    assert (
        a.optim.lr == pytest.approx(1e-6)
        and a.use_kl_loss is False
        and cfg.algorithm.use_kl_in_reward is False
    )
    assert cfg.algorithm.kl_ctrl.kl_coef == 0.0 and a.entropy_coeff == 0
    assert cfg.data.train_batch_size == 128 and a.ppo_mini_batch_size == 128
    assert r.temperature == 1.0 and cfg.trainer.total_epochs == 1
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (12288, 12288)
    assert (r.prompt_length, r.response_length) == (12288, 12288)
    assert r.name == "vllm" and r.tensor_model_parallel_size == 4 and r.multi_turn.enable
    assert a.freeze_vision_tower is True and cfg.data.image_patch_size == patch
    # verl 0.9.1 ignores freeze_vision_tower: the recipe freezes through the model's external_lib
    assert cfg.actor_rollout_ref.model.external_lib == "vretrver.integrations.verl.frozen_vision"
    assert not need_critic(cfg) and not need_reference_policy(cfg)  # KL 0: no reference forward
    # our pieces are wired in
    assert r.agent.default_agent_loop == "vretrver_agent"
    assert cfg.reward.custom_reward_function.reward_kwargs.variant == "eapo"
    assert cfg.data.tool_config_path is None  # the template must not add its own tool block
    # verl's dataclasses accept the sections
    rollout = omega_conf_to_dataclass(r)
    assert rollout.multi_turn.tool_config_path.endswith("tools.yaml")
    assert omega_conf_to_dataclass(a).ppo_mini_batch_size == 128


def test_recipe_paths_load_our_classes():
    from omegaconf import OmegaConf
    from verl.tools.tool_registry import initialize_tools_from_config
    from verl.utils.import_utils import load_extern_object

    cfg = compose("qwen2_5_vl_7b_rl", ["actor_rollout_ref.model.path=/nonexistent"])
    r = cfg.actor_rollout_ref.rollout
    tools = initialize_tools_from_config(str(ROOT / r.multi_turn.tool_config_path))
    assert sorted(t.name for t in tools) == ["crop_image", "select_images"]
    (entry,) = OmegaConf.load(ROOT / r.agent.agent_loop_config_path)
    assert entry.name == r.agent.default_agent_loop
    from vretrver.integrations.verl.agent_loop import VRetrverAgentLoop

    assert entry._target_ == f"{VRetrverAgentLoop.__module__}.{VRetrverAgentLoop.__qualname__}"
    fn = load_extern_object(
        str(ROOT / cfg.reward.custom_reward_function.path), cfg.reward.custom_reward_function.name
    )
    assert callable(fn)


def test_overrides_for_the_ablation_and_cluster(tiny_qwen25vl):
    cfg = compose(
        "qwen2_5_vl_7b_rl",
        [
            f"actor_rollout_ref.model.path={tiny_qwen25vl}",
            "reward.custom_reward_function.reward_kwargs.variant=text-only",
            "trainer.nnodes=4",
            "trainer.logger=[console,wandb,swanlab,tensorboard]",
        ],
    )
    assert cfg.trainer.nnodes == 4 and list(cfg.trainer.logger) == [
        "console",
        "wandb",
        "swanlab",
        "tensorboard",
    ]
    from vretrver.integrations.verl.reward import settings_from_kwargs

    assert settings_from_kwargs(dict(cfg.reward.custom_reward_function.reward_kwargs)).tools is False


FROZEN_CHECK = """
import json, sys
from transformers import AutoModelForImageTextToText
import vretrver.integrations.verl.frozen_vision  # what verl imports as the model's external_lib
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
model.save_pretrained(sys.argv[2])
grads = {n: p.requires_grad for n, p in model.named_parameters()}
print(json.dumps({"cls": type(model).__name__, "grads": grads}))
"""


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_frozen_vision_external_lib(family, request, tmp_path):
    """The recipe's external_lib freezes exactly the vision encoder (merger included) of a loaded model and
    keeps the upstream architecture name in saved checkpoints (run apart: it registers model classes)."""
    import json
    import subprocess
    import sys

    model = request.getfixturevalue("tiny_qwen25vl" if family == "qwen2_5_vl" else "tiny_qwen3vl")
    upstream = json.loads((model / "config.json").read_text())["architectures"]
    proc = subprocess.run(
        [sys.executable, "-c", FROZEN_CHECK, str(model), str(tmp_path / "saved")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    vision = {n: g for n, g in out["grads"].items() if n.startswith("model.visual.")}
    language = {n: g for n, g in out["grads"].items() if not n.startswith("model.visual.")}
    assert vision and not any(vision.values())
    assert any("merger" in n for n in vision)
    assert language and all(language.values())
    assert [out["cls"]] == upstream
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == upstream
