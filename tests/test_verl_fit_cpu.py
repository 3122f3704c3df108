"""verl's full PPO trainer on CPU: `DEVICE=cpu local_scripts/run_rl.sh` (verl 0.9.1's trainer, its FSDP2
actor on gloo, vLLM's CPU build as the rollout server kept in sync with the actor, our agent loop, tools
and reward) runs two GRPO steps of the tiny Qwen2.5-VL and saves a checkpoint;
local_scripts/merge_checkpoint.sh turns it into a Hugging Face folder that `vretrver eval` loads. The tiny
model is first taught to answer the sample in the protocol's format (tests/verl_scripts/teach_answers.py):
a random model scores 0 on every rollout, and GRPO then has nothing to learn from.

The CPU fixes that make this work (vretrver.integrations.verl.cpu_platform and .vllm_cpu) are also tested
one by one, each against the call that fails without it.

Needs the CPU RL environment (`bash local_scripts/setup.sh --rl-cpu` creates .venv-rl-cpu; another
interpreter with the same packages can be named by VRETRVER_RL_CPU_PYTHON).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from verl_rig import make_sample

from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT
from vretrver.integrations.verl.cpu_overrides import CPU_PROCESS_OVERRIDES
from vretrver.integrations.verl.dataset import RLDataConfig, write_rl_parquet

ROOT = Path(__file__).resolve().parent.parent
RL_PYTHON = Path(os.environ.get("VRETRVER_RL_CPU_PYTHON", ROOT / ".venv-rl-cpu" / "bin" / "python"))
STEPS = 2
TIMEOUT = 2400  # seconds for the trainer run: 2-4 minutes on a 2-core machine

VLLM_PYTHON = Path(os.environ.get("VRETRVER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
MODULE = "vretrver.integrations.verl.cpu_platform"
needs_rl_cpu = pytest.mark.skipif(
    not RL_PYTHON.is_file(),
    reason=f"no CPU RL environment at {RL_PYTHON} (bash local_scripts/setup.sh --rl-cpu)",
)

# Two prompts per step, four rollouts each. The learning rate is 1e-3 without warm-up (the recipe: 1e-6
# after 10 warm-up steps) so that two Adam steps visibly move the bf16 weights of a tiny model.
OVERRIDES = [
    "data.train_batch_size=2",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.optim.lr=1e-3",
    "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
    "data.max_prompt_length=4096",
    "data.max_response_length=512",
    *CPU_PROCESS_OVERRIDES,
    # one sequence per micro-batch: the logits over Qwen's 151k-token vocabulary dominate the memory
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048",
    f"trainer.total_training_steps={STEPS}",
    f"trainer.save_freq={STEPS}",
    "trainer.test_freq=-1",
]
# Ray prefixes a worker's lines with its name (in colour); verl may log one step over several lines
STEP_LINE = re.compile(r"^(?:\([^)]*\) )?step:(\d+) - (.*)$", re.M)
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
NUMBER = re.compile(r"^(?:np\.\w+\()?(-?[0-9.e+-]+|nan|inf)\)?$")


def step_metrics(log: str) -> dict[int, dict[str, float]]:
    """The console logger's lines `step:N - key:value - ...` as {N: {key: value}} (numbers only)."""
    out: dict[int, dict[str, float]] = {}
    for m in STEP_LINE.finditer(COLOUR.sub("", log)):
        metrics = out.setdefault(int(m.group(1)), {})
        for kv in m.group(2).split(" - "):
            key, _, value = kv.rpartition(":")
            number = NUMBER.match(value.strip())
            if key and number:
                metrics[key] = float(number.group(1))
    return out


def run_python(python: Path | str, code: str, **env: str) -> str:
    proc = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


# ------------------------------------------------------------------------------------ the fixes, one by one

VERL_FIXES = """
import os, torch, verl
from tensordict import TensorDict

# the worker process group: verl asks for 'cpu:gloo,<device>:<backend>', i.e. the CPU twice here
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
from verl.utils.distributed import initialize_global_process_group_ray
initialize_global_process_group_ray()
print("backend", torch.distributed.get_backend())

# the FSDP engine for the cpu device
from verl.workers.engine import EngineRegistry
print("engine", EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)

# 3-row position ids (Qwen2.5-VL's mrope) of equally long sequences, packed ragged over the rows the way
# a batch comes back from verl's transfer queue
from verl.workers.engine.base import maybe_fix_3d_position_ids
rows = [torch.arange(4 * 6).view(4, 6) + i for i in range(3)]
td = TensorDict({"position_ids": torch.nested.as_nested_tensor(rows, layout=torch.jagged)}, batch_size=[3])
maybe_fix_3d_position_ids(td)
print("equal", all(torch.equal(a, b) for a, b in zip(td["position_ids"].unbind(), rows)))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_platform_fixes_verl_process_groups_engine_and_position_ids():
    """With the module named in VERL_USE_EXTERNAL_MODULES, verl's own calls work on the CPU platform."""
    out = run_python(
        sys.executable,
        VERL_FIXES,
        VERL_USE_EXTERNAL_MODULES=MODULE,
        VERL_PLATFORM="cpu",
        PORT=str(_free_port()),
    )
    assert "backend gloo" in out
    assert "engine FSDPEngineWithLMHead" in out
    assert "equal True" in out


VLLM_FIXES = """
import importlib.metadata as md
from vretrver.integrations.verl.vllm_cpu import alias_vllm_cpu_distribution, keep_cpu_linear_weights
assert alias_vllm_cpu_distribution()
# verl reads the version of the distribution 'vllm'; vLLM recognises its CPU build by the '+cpu' suffix
print("version", md.version("vllm"), md.version("vllm-cpu"))
keep_cpu_linear_weights()
import torch
from vllm.platforms import current_platform
from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
print("cpu", current_platform.is_cpu())

layer = torch.nn.Module()
weight = torch.nn.Parameter(torch.randn(64, 32, dtype=torch.bfloat16), requires_grad=False)
weight.weight_loader = lambda param, loaded: param.data.copy_(loaded)
layer.register_parameter("weight", weight)
x = torch.randn(3, 32, dtype=torch.bfloat16)
dispatch_cpu_unquantized_gemm(layer, remove_weight=True)  # what a linear layer's post-load step calls
print("kept", layer.weight is weight)
# a weight sync: load new values through the parameter's loader, then run the post-load step again
new = torch.randn(64, 32, dtype=torch.bfloat16)
layer.weight.weight_loader(layer.weight, new)
dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
y = layer.cpu_linear(x, layer.weight, None)
print("synced", torch.allclose(y.float(), (x.float() @ new.float().T), atol=0.1, rtol=0.02))
"""


@pytest.mark.vllm
@pytest.mark.parametrize("python", [RL_PYTHON, VLLM_PYTHON], ids=["rl-cpu", "vllm"])
def test_vllm_cpu_build_is_found_as_vllm_and_keeps_linear_weights(python):
    if not Path(python).is_file():
        pytest.skip(f"no vllm-cpu environment at {python}")
    out = run_python(python, VLLM_FIXES)
    version = out.split("version ", 1)[1].split()
    assert version[0] == f"{version[1]}+cpu"
    assert "cpu True" in out
    assert "kept True" in out
    assert "synced True" in out


def test_run_rl_on_cpu_passes_the_cpu_settings(tmp_path, tiny_qwen25vl, sample_photos):
    """DEVICE=cpu: no GPU needed; every verl process imports the CPU platform; vLLM without sleep mode, loading
    the model itself; Ray gets one logical GPU per training process."""
    parquet = tmp_path / "train.parquet"
    write_rl_parquet(
        parquet, [make_sample(sample_photos)], RLDataConfig(coordinates="qwen2.5-vl"), progress=False
    )
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'echo "$VERL_PLATFORM $VERL_USE_EXTERNAL_MODULES" > "{tmp_path}/env.txt"\n'
        f'exec "{sys.executable}" "{ROOT / "tests" / "verl_scripts" / "compose_only.py"}" "$@"\n'
    )
    python.chmod(0o755)
    composed = tmp_path / "composed.json"
    env = {
        k: v for k, v in os.environ.items() if k not in ("GPUS_PER_NODE", "TP", "VERL_USE_EXTERNAL_MODULES")
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "local_scripts" / "run_rl.sh")],
        cwd=tmp_path,
        env={
            **env,
            "DEVICE": "cpu",
            "PYTHON": str(python),
            "COMPOSED_CONFIG": str(composed),
            "MODEL": str(tiny_qwen25vl),
            "TRAIN_FILES": str(parquet),
            "PATH": "/usr/bin:/bin",  # no nvidia-smi
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "env.txt").read_text().split() == [
        "cpu",
        f"{MODULE},vretrver.integrations.verl.rollout_dump",
    ]
    cfg = json.loads(composed.read_text())
    rollout = cfg["actor_rollout_ref"]["rollout"]
    assert rollout["enable_sleep_mode"] is False and rollout["free_cache_engine"] is False
    assert rollout["load_format"] == "auto" and rollout["tensor_model_parallel_size"] == 1
    assert cfg["trainer"]["n_gpus_per_node"] == 1
    assert cfg["ray_kwargs"]["ray_init"]["num_gpus"] == 1 and cfg["ray_kwargs"]["ray_init"]["num_cpus"] == 16


# ------------------------------------------------------------------------------------ the whole trainer


@pytest.fixture(scope="module")
def fit(tmp_path_factory, tiny_qwen25vl, sample_photos) -> dict:
    work = tmp_path_factory.mktemp("fit-cpu")
    taught = work / "taught"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "verl_scripts" / "teach_answers.py"), str(tiny_qwen25vl)]
        + [str(taught), str(work)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sample = make_sample(sample_photos)
    parquet = work / "train.parquet"
    samples = [dataclasses.replace(sample, id=f"q{i}") for i in range(2 * STEPS)]
    write_rl_parquet(parquet, samples, RLDataConfig(coordinates="qwen2.5-vl"), progress=False)
    ckpt = work / "ckpt"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PYTHON": str(RL_PYTHON),
        "PATH": f"{RL_PYTHON.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MODEL": str(taught),
        "TRAIN_FILES": str(parquet),
        "CKPT_DIR": str(ckpt),
        "RESUME": "disable",
        # Ray's memory monitor counts every process of a shared machine against the run
        "RAY_memory_monitor_refresh_ms": "0",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "local_scripts" / "run_rl.sh"), *OVERRIDES],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    log = proc.stdout + proc.stderr
    (work / "run.log").write_text(log)
    assert proc.returncode == 0, log[-8000:]
    return {"ckpt": ckpt, "log": log, "work": work, "start": taught}


@pytest.mark.manual
@pytest.mark.slow
@needs_rl_cpu
def test_two_grpo_steps_train_and_save_a_checkpoint(fit):
    metrics = step_metrics(fit["log"])
    assert sorted(metrics) == list(range(1, STEPS + 1))
    for step, m in metrics.items():
        # rewards from our reward file: the EAPO score lies in [0, 1.2] (1.2: first, one valid call)
        assert 0.0 <= m["critic/score/min"] <= m["critic/score/max"] <= 1.2 + 1e-6, (step, m)
        assert math.isfinite(m["actor/pg_loss"]) and math.isfinite(m["actor/grad_norm"]), (step, m)
        assert m["actor/lr"] == pytest.approx(1e-3)
        # the vLLM server generated the answers, with the actor's weights: its token log-probs agree
        assert 0 < m["response_length/mean"] < 512 and m["timing_s/gen"] > 0, (step, m)
        assert m["training/rollout_probs_diff_mean"] < 0.05, (step, m)
    assert (fit["ckpt"] / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)
    assert (fit["ckpt"] / f"global_step_{STEPS}" / "actor" / "fsdp_config.json").is_file()


@pytest.mark.manual
@pytest.mark.slow
@needs_rl_cpu
def test_rewards_differ_and_the_update_moves_the_language_model(fit, merged):
    import torch
    from transformers import AutoModelForImageTextToText

    metrics = step_metrics(fit["log"])
    # the taught model answers two ways, so rewards differ within a group and the actor gets a gradient
    assert any(m["critic/score/max"] > m["critic/score/min"] for m in metrics.values())
    assert any(m["actor/grad_norm"] > 0 for m in metrics.values())
    trained = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).state_dict()
    start = AutoModelForImageTextToText.from_pretrained(fit["start"], dtype=torch.float32).state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start if "language_model" in k)


@pytest.fixture(scope="module")
def merged(fit) -> Path:
    out = fit["work"] / "hf"
    proc = subprocess.run(
        ["bash", str(ROOT / "local_scripts" / "merge_checkpoint.sh"), str(fit["ckpt"]), "", str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.manual
@pytest.mark.slow
@needs_rl_cpu
def test_merged_checkpoint_is_the_trained_policy(fit, merged):
    import torch
    from transformers import AutoModelForImageTextToText

    trained = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).state_dict()
    start = AutoModelForImageTextToText.from_pretrained(fit["start"], dtype=torch.float32).state_dict()
    assert trained.keys() == start.keys()
    moved = {k for k in start if not torch.equal(start[k], trained[k])}
    vision = {k for k in start if ".visual." in f".{k}"}
    assert vision and not moved & vision  # the recipe freezes the vision encoder


@pytest.mark.manual
@pytest.mark.slow
@needs_rl_cpu
@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"Tux Paint stamps are not installed at {DEFAULT_ROOT}")
def test_evaluation_reranks_with_the_merged_checkpoint(fit, merged):
    out = fit["work"] / "eval"
    proc = subprocess.run(
        [
            sys.executable, "-m", "vretrver.cli", "eval", "--benchmark", "tuxpaint", "--tasks", "tuxpaint_t2i",
            "--retriever", "hash", "--reranker", str(merged), "--engine", "hf", "--limit", "1", "--top-n", "5",
            "--max-new-tokens", "64", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tasks = json.loads((out / "summary.json").read_text())["tasks"]
    assert list(tasks) == ["tuxpaint_t2i"] and tasks["tuxpaint_t2i"]["reranked"] is not None
