"""One GRPO step of the RL recipe on CPU with verl's own step code and FSDP2 actor (tests/verl_scripts/
grpo_step.py, in a fresh process because verl fixes its platform once per process): rewards from our reward
file, GRPO advantages over the group, one actor update that moves the language model, not the frozen
vision encoder, towards the better trajectories. Generation is scripted: verl's rollout needs a vLLM /
SGLang server."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "verl_scripts" / "grpo_step.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def step(request, tmp_path_factory) -> dict:
    model = request.getfixturevalue("tiny_qwen25vl" if request.param == "qwen2_5_vl" else "tiny_qwen3vl")
    work = tmp_path_factory.mktemp(f"grpo-{request.param}")
    out = work / "step.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(model), request.param, str(work), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "MASTER_PORT": str(_free_port())},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_rewards_and_grpo_advantages(step):
    scores = step["scores"]
    # two answers ranking the positive first after one valid call, one ranking it second, one malformed
    assert sorted(scores) == pytest.approx(sorted([1.2, 1.2, 0.2 + 0.8 * math.exp(-0.5), 0.0]), abs=1e-6)
    s = torch.tensor(scores)
    expected = (s - s.mean()) / (s.std() + 1e-6)  # GRPO: normalised within the prompt's group
    for adv, want in zip(step["advantages_in_mask"], expected.tolist()):
        assert len(adv) == 1  # one advantage for every token the model generated
        assert adv[0] == pytest.approx(want, abs=1e-4)
    assert step["advantage_outside_mask"] == 0.0  # tool observations and padding carry none


@pytest.mark.slow
def test_actor_update_moves_the_language_model_towards_better_trajectories(step):
    m = step["metrics"]
    assert math.isfinite(m["actor/pg_loss"][0]) and m["actor/grad_norm"][0] > 0
    assert m["actor/lr"][0] == pytest.approx(1e-3)
    assert step["max_change_language"] > 0
    # the recipe's frozen vision encoder (frozen_vision external_lib) is untouched
    assert step["freeze_vision_tower"] and step["n_vision_params"] > 0
    assert step["max_change_vision"] == 0.0
    adv = [a[0] for a in step["advantages_in_mask"]]
    change = step["logp_change"]
    best = [c for a, c in zip(adv, change) if a == max(adv)]
    worst = [c for a, c in zip(adv, change) if a == min(adv)]
    assert min(best) > max(worst)


def test_cpu_platform_is_selected_by_verl_environment_variables():
    """Any process (a Ray worker too) picks the platform with VERL_PLATFORM=cpu when verl imports the module."""
    code = (
        "from verl.plugin.platform.platform_manager import get_platform; p = get_platform(); "
        "print(p.device_name, p.communication_backend_name(), p.ray_resource_options(1))"
    )
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": "vretrver.integrations.verl.cpu_platform",
        "VERL_PLATFORM": "cpu",
    }
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:2] == ["cpu", "gloo"]
    assert "'num_gpus': 1" in proc.stdout  # one logical accelerator slot per training process
