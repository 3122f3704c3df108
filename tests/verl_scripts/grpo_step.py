"""One GRPO step of our RL recipe on CPU, with verl's own trainer code, on a tiny model.

Rollout: verl's AgentLoopWorker with our agent loop, tools and reward file against the scripted stand-in
server of tests/verl_rig.py (generation needs a vLLM / SGLang server, which verl cannot use on CPU).
Then, as verl's RayPPOTrainer does in one step: reward from the rollout, old log-probs from the actor,
GRPO advantages, one actor update; here the actor is verl's ActorRolloutRefWorker with its FSDP2 engine
on CPU (gloo, vretrver.integrations.verl.cpu_platform), called in-process instead of through Ray.

Run in a fresh process (verl reads its platform once): python grpo_step.py MODEL FAMILY WORKDIR OUT_JSON
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import types
from pathlib import Path

from vretrver.integrations.verl.cpu_platform import use_cpu_platform

use_cpu_platform()  # before verl's workers are imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the rig and the sample photos

import verl_rig  # noqa: E402
from photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET  # noqa: E402

N = 4  # rollouts of the one prompt: one GRPO group
SCRIPTS = [
    [verl_rig.SELECT3, verl_rig.ANSWER_GT_FIRST],  # a valid call, positive first: 1.2
    [verl_rig.CROP, verl_rig.ANSWER_GT_FIRST],  # a valid call, positive first: 1.2
    [verl_rig.ANSWER_GT_SECOND],  # positive second, no tool: 0.2 + 0.8 * exp(-1/2)
    ["<think>no action here</think>"],  # malformed: 0
]
# Our recipe, shrunk to one prompt on one process. The learning rate is 1e-3 rather than the recipe's
# 1e-6 so that one Adam step visibly moves bf16 weights of a random model.
OVERRIDES = {
    "data.train_batch_size": 1,
    "actor_rollout_ref.rollout.n": N,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 1,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
    "actor_rollout_ref.actor.optim.lr": 1e-3,
    "actor_rollout_ref.actor.optim.lr_warmup_steps": 0,
    # no flash-attention on CPU: plain attention, padded batches
    "+actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
    "actor_rollout_ref.model.use_remove_padding": False,
    "actor_rollout_ref.model.enable_gradient_checkpointing": False,
}


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in module.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 shards are DTensors
        out[name] = full.detach().float().clone()
    return out


def main(model: Path, family: str, workdir: Path, out_json: Path) -> None:
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer, compute_advantage
    from verl.trainer.ppo.reward import extract_reward
    from verl.workers.engine_workers import ActorRolloutRefWorker

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    photos = {"astronaut": ASTRONAUT, "coffee": COFFEE, "chelsea": CHELSEA, "rocket": ROCKET}

    # 1. rollout: N trajectories of one prompt, rewarded by our reward file inside the agent loop
    rig = verl_rig.Rig(family, model, photos, workdir, loop, overrides=OVERRIDES)
    cfg = rig.cfg
    batch, _ = rig.run(SCRIPTS)
    batch.non_tensor_batch["uid"] = np.array(["q1"] * N, dtype=object)  # one group
    # what RayPPOTrainer.fit adds to the batch before the actor sees it
    batch.meta_info["temperature"] = cfg.actor_rollout_ref.rollout.temperature
    batch.meta_info["global_token_num"] = batch.batch["attention_mask"].sum(-1).tolist()
    batch.meta_info["images_seqlens"] = [
        n
        for mmi in batch.non_tensor_batch["multi_modal_inputs"]
        if "image_grid_thw" in mmi
        for n in mmi["images_seqlens"].tolist()
    ]

    # 2. the actor: verl's worker and FSDP2 engine, on CPU
    worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")
    worker.init_model()
    trainer = types.SimpleNamespace(config=cfg, actor_rollout_wg=worker, distillation_config=None)
    module = worker.actor.engine.module
    before = _params(module)

    # 3. one step, in RayPPOTrainer.fit's order: reward, old log-probs, advantages, actor update
    reward, _ = extract_reward(batch)
    old, _ = RayPPOTrainer._compute_old_log_prob(trainer, batch)
    old.batch.pop("entropys")
    batch = batch.union(old)
    batch.batch["token_level_scores"] = batch.batch["token_level_rewards"] = reward
    batch = compute_advantage(
        batch,
        adv_estimator=cfg.algorithm.adv_estimator,
        gamma=cfg.algorithm.gamma,
        lam=cfg.algorithm.lam,
        num_repeat=N,
        norm_adv_by_std_in_grpo=cfg.algorithm.get("norm_adv_by_std_in_grpo", True),
        config=cfg.algorithm,
    )
    metrics = RayPPOTrainer._update_actor(trainer, batch).meta_info["metrics"]
    new, _ = RayPPOTrainer._compute_old_log_prob(trainer, batch)

    after = _params(module)
    mask = batch.batch["response_mask"].bool()
    adv = batch.batch["advantages"]
    changed = {n: float((after[n] - before[n]).abs().max()) for n in before}
    result = {
        "turns": [list(r["turns"]) for r in batch.non_tensor_batch["vretrver_rollout"]],
        "scores": reward.sum(-1).tolist(),
        "advantages_in_mask": [sorted(set(adv[i][mask[i]].tolist())) for i in range(N)],
        "advantage_outside_mask": float(adv[~mask].abs().max()) if (~mask).any() else 0.0,
        "logp_change": ((new.batch["old_log_probs"] - batch.batch["old_log_probs"]) * mask).sum(-1).tolist(),
        "metrics": {k: [float(x) for x in np.atleast_1d(v)] for k, v in metrics.items()},
        "max_change_language": max(v for n, v in changed.items() if ".visual." not in f".{n}"),
        "max_change_vision": max(v for n, v in changed.items() if ".visual." in f".{n}"),
        "n_vision_params": sum(".visual." in f".{n}" for n in changed),
        "freeze_vision_tower": bool(cfg.actor_rollout_ref.actor.freeze_vision_tower),
    }
    tmp = out_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out_json)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
