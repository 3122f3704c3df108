"""local_scripts/run_rl.sh on one node: the data check it runs first, and the exact arguments it gives verl's
trainer, composed into verl's config and validated (tests/verl_scripts/compose_only.py stands in for
`python -m verl.trainer.main_ppo`; training itself needs GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from verl_rig import make_sample

from vretrver.integrations.verl.dataset import RLDataConfig, write_rl_parquet

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "local_scripts" / "run_rl.sh"
COMPOSE_ONLY = ROOT / "tests" / "verl_scripts" / "compose_only.py"


@pytest.fixture
def rl_parquet(tmp_path, sample_photos) -> Path:
    path = tmp_path / "data" / "train.parquet"
    path.parent.mkdir()
    write_rl_parquet(
        path, [make_sample(sample_photos)], RLDataConfig(coordinates="qwen2.5-vl"), progress=False
    )
    return path


def run_rl(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{COMPOSE_ONLY}" "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "composed.json"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "trainer.save_freq=20"],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": str(python), "COMPOSED_CONFIG": str(out), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_run_rl_composes_a_valid_verl_config(tmp_path, rl_parquet, tiny_qwen25vl):
    proc, cfg = run_rl(
        tmp_path,
        MODEL=str(tiny_qwen25vl),
        TRAIN_FILES=str(rl_parquet.relative_to(tmp_path)),
        GPUS_PER_NODE="1",
        TP="1",
        VARIANT="public",
        LOGGER="console,tensorboard",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    arr = cfg["actor_rollout_ref"]
    assert arr["model"]["path"] == str(tiny_qwen25vl)
    assert cfg["data"]["train_files"] == [str(rl_parquet)]  # made absolute for the Ray workers
    assert cfg["data"]["val_files"] == [str(rl_parquet)]
    assert cfg["reward"]["custom_reward_function"]["reward_kwargs"]["variant"] == "public"
    assert Path(cfg["reward"]["custom_reward_function"]["path"]).is_file()
    assert Path(arr["rollout"]["multi_turn"]["tool_config_path"]).is_file()
    assert cfg["trainer"]["logger"] == ["console", "tensorboard"]
    assert (cfg["trainer"]["nnodes"], cfg["trainer"]["n_gpus_per_node"]) == (1, 1)
    assert arr["rollout"]["tensor_model_parallel_size"] == 1
    assert cfg["trainer"]["resume_mode"] == "auto" and cfg["trainer"]["save_freq"] == 20
    assert cfg["trainer"]["default_local_dir"].endswith("checkpoints/v-retrver/qwen2_5_vl_7b_rl_public")
    assert arr["model"]["external_lib"] == "vretrver.integrations.verl.frozen_vision"
    # no flash-attn here: the script falls back to sdpa on padded batches, and says so
    assert "flash-attn is not installed" in proc.stderr
    assert arr["model"]["override_config"]["attn_implementation"] == "sdpa"
    assert arr["model"]["use_remove_padding"] is False


def test_run_rl_checks_the_data_before_training(tmp_path, tiny_qwen25vl):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not a parquet file")
    proc, cfg = run_rl(tmp_path, MODEL=str(tiny_qwen25vl), TRAIN_FILES=str(bad), GPUS_PER_NODE="1")
    assert proc.returncode != 0 and cfg is None
    assert "bad.parquet" in proc.stderr


def test_run_rl_without_gpus_says_so(tmp_path):
    proc, cfg = run_rl(tmp_path, MODEL="m", TRAIN_FILES="t", GPUS_PER_NODE="0")
    assert proc.returncode == 2 and cfg is None
    assert "no GPU found" in proc.stderr
