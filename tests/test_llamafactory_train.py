"""The SFT / RFT recipes: the paper's settings in the configs, the launch scripts, and real
``llamafactory-cli train`` runs on exported data with the tiny Qwen2.5-VL and Qwen3-VL (full fine-tuning,
frozen vision tower and projector) whose checkpoints then rerank through the transformers engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from photos import DATA

from vretrver.integrations.llamafactory import (
    TEMPLATES,
    ExportConfig,
    dataset_info_entry,
    export_llamafactory,
)
from vretrver.samples import Candidate, Query, Sample
from vretrver.sft import ScriptedEngine, SynthesisConfig, script_from_table, synthesize
from vretrver.tools import ToolConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "LLaMA-Factory" / "configs"
RUN_SFT = ROOT / "local_scripts" / "run_sft.sh"
RUN_RFT = ROOT / "local_scripts" / "run_rft.sh"
RECIPES = {
    "qwen2_5_vl_7b_full_sft.yaml": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "vretrver_sft"),
    "qwen2_5_vl_7b_full_rft.yaml": ("outputs/sft/qwen2_5_vl_7b", "qwen2_5_vl", "vretrver_rft"),
    "qwen3_vl_8b_full_sft.yaml": ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", "vretrver_sft_qwen3vl"),
    "qwen3_vl_8b_full_rft.yaml": ("outputs/sft/qwen3_vl_8b", "qwen3_vl", "vretrver_rft_qwen3vl"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_carry_the_paper_settings(name):
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    model, family, dataset = RECIPES[name]
    assert cfg["model_name_or_path"] == model and cfg["dataset"] == dataset
    assert cfg["template"] == TEMPLATES[family]
    expected = {
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": True,
        "freeze_multi_modal_projector": True,
        "freeze_language_model": False,
        "learning_rate": 1.0e-5,
        "num_train_epochs": 2.0,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "bf16": True,
        "cutoff_len": 32768,
        "image_max_pixels": 2_000_000,
        "dataset_dir": "LLaMA-Factory/data",
        "overwrite_output_dir": False,
    }
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["per_device_train_batch_size"] * cfg["gradient_accumulation_steps"] * 8 == 64
    ds = json.loads((ROOT / cfg["deepspeed"]).read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] == "auto"
    info = json.loads((ROOT / cfg["dataset_dir"] / "dataset_info.json").read_text())
    assert info[dataset] == dataset_info_entry(f"{dataset}.json")


def _dry_run(script: Path, *args: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "CONFIG")}
    full.update(DRY_RUN="1", NPROC_PER_NODE="8", **env)
    out = subprocess.run(["bash", str(script), *args], env=full, capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_launch_scripts_compute_the_batch_and_select_logger_and_resume(tmp_path):
    out = _dry_run(RUN_SFT)
    assert "llamafactory-cli train LLaMA-Factory/configs/qwen2_5_vl_7b_full_sft.yaml" in out
    assert (
        "gradient_accumulation_steps=8 " in out
        and "report_to=none" in out
        and "overwrite_output_dir=false" in out
    )
    out = _dry_run(
        RUN_SFT,
        "LLaMA-Factory/configs/qwen3_vl_8b_full_sft.yaml",
        "max_steps=5",
        NNODES="4",
        NODE_RANK="2",
        MASTER_ADDR="10.0.0.1",
        LOGGER="swanlab",
        RUN_NAME="r1",
        RESUME="never",
    )
    assert "qwen3_vl_8b_full_sft.yaml" in out and "nodes 4 (rank 2) x 8 procs" in out
    assert "gradient_accumulation_steps=2 " in out  # 64 / (1 x 8 x 4)
    assert "use_swanlab=true" in out and "swanlab_run_name=r1" in out and "overwrite_output_dir=true" in out
    assert out.rstrip().endswith("max_steps=5")
    out = _dry_run(RUN_RFT, LOGGER="wandb", RESUME=str(tmp_path), MODEL="/ckpt/sft")
    assert "qwen2_5_vl_7b_full_rft.yaml" in out and "report_to=wandb" in out
    assert f"resume_from_checkpoint={tmp_path}" in out and "model_name_or_path=/ckpt/sft" in out
    bad = subprocess.run(
        ["bash", str(RUN_SFT)],
        env={**os.environ, "DRY_RUN": "1", "NPROC_PER_NODE": "6"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not a multiple" in bad.stderr
    bad = subprocess.run(
        ["bash", str(RUN_SFT)],
        env={**os.environ, "DRY_RUN": "1", "LOGGER": "mlflow"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "LOGGER must be" in bad.stderr


# ----------------------------------------------------------------------------- real training runs


def _samples() -> list[Sample]:
    out = []
    for i, (pos, img) in enumerate([("c2", "astronaut.png"), ("c1", "coffee.png")]):
        cands = [
            Candidate("c1", "a cup of coffee", str(DATA / "coffee.png")),
            Candidate("c2", "an astronaut", str(DATA / "astronaut.png")),
            Candidate("c3", "a ginger cat", str(DATA / "chelsea.png")),
        ]
        out.append(
            Sample(
                f"t:q{i}",
                Query(text=f"query {i}: what is shown", images=[str(DATA / img)]),
                cands,
                positives=[pos],
                task="t",
            )
        )
    return out


def _turns(pos: int) -> list[str]:
    select = {"name": "select_images", "arguments": {"target_images": [0, pos]}}
    crop = {"name": "crop_image", "arguments": {"bbox_2d": [0.1, 0.1, 0.8, 0.9], "target_image": pos}}
    rest = [n for n in (1, 2, 3) if n != pos]
    return [
        f"<think>Compare the query with candidate {pos}.</think>\n<tool_call>\n{json.dumps(select)}\n</tool_call>",
        f"<think>Zoom in.</think>\n<tool_call>\n{json.dumps(crop)}\n</tool_call>",
        f"<think>Candidate {pos} matches.</think>\n<answer>{json.dumps([pos, *rest])}</answer>",
    ]


def _train(model: Path, config: str, tmp_path: Path, steps: int, out: Path, extra_env: dict | None = None):
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        PYTHON=sys.executable,
        NPROC_PER_NODE="0",  # no GPU: one plain process
        GLOBAL_BATCH="1",
        MODEL=str(model),
        OUTPUT_DIR=str(out),
        DATASET="vr",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        WANDB_MODE="disabled",
        **(extra_env or {}),
    )
    args = [
        f"dataset_dir={tmp_path / 'data'}",
        "deepspeed=null",
        "bf16=false",
        f"max_steps={steps}",
        "save_steps=2",
        "cutoff_len=4096",
        "image_max_pixels=50176",
        "preprocessing_num_workers=1",
        "dataloader_num_workers=0",
        "learning_rate=1.0e-3",
        "logging_steps=1",
        "plot_loss=false",
    ]
    return subprocess.run(
        ["bash", str(RUN_SFT), str(CONFIGS / config), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: v.float() for k, v in load_file(f).items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_llamafactory_cli_trains_the_tiny_model_on_exported_data_and_the_checkpoint_reranks(
    family, request, tmp_path
):
    import torch
    from transformers import AutoProcessor

    from vretrver.engines.base import GenerationConfig
    from vretrver.engines.hf import HFEngine
    from vretrver.rerank import run_episodes
    from vretrver.testing.tiny_models import chat_template_text

    model = Path(request.getfixturevalue("tiny_qwen25vl" if family == "qwen2_5_vl" else "tiny_qwen3vl"))
    config = "qwen2_5_vl_7b_full_sft.yaml" if family == "qwen2_5_vl" else "qwen3_vl_8b_full_sft.yaml"
    tool_cfg = ToolConfig.from_processor(AutoProcessor.from_pretrained(model))
    samples = _samples()
    table = {f"query {i}:": [_turns(s.positive_numbers()[0])] for i, s in enumerate(samples)}
    synthesize(
        samples,
        ScriptedEngine(script_from_table(table), tool_cfg),
        tmp_path / "run",
        SynthesisConfig(attempts=1, temperature=0.0),
        progress=False,
    )
    report = export_llamafactory(
        tmp_path / "run",
        tmp_path / "data",
        ExportConfig(name="vr", model=str(model), cutoff_len=4096),
        progress=False,
    )
    assert report["rows"] == 2

    out = tmp_path / "ckpt"
    proc = _train(model, config, tmp_path, 2, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    log = proc.stdout + proc.stderr
    assert "Set vision model not trainable" in log and "Set multi model projector not trainable" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all(
        torch.isfinite(torch.tensor(h["loss"])) for h in state["log_history"] if "loss" in h
    )

    before, after = _weights(model), _weights(out)
    assert before.keys() == after.keys()
    visual = [k for k in before if ".visual." in f".{k}"]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)  # vision tower + projector frozen
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in visual)  # the LM learned
    assert (out / "chat_template.jinja").read_text() == chat_template_text(family)  # our template survives

    engine = HFEngine(str(out), device="cpu")
    assert engine.tool_config == tool_cfg
    [ep] = run_episodes(
        samples[:1], engine, "v-retrver", GenerationConfig(max_new_tokens=16, temperature=0.0)
    )
    assert ep.done and ep.turns and ep.turns[0].role == "assistant" and ep.ranking is not None
    assert sorted(ep.ranking) == [1, 2, 3]

    if family == "qwen2_5_vl":  # resume: the same command with more steps continues from checkpoint-2
        proc = _train(model, config, tmp_path, 3, out)
        assert proc.returncode == 0, proc.stderr[-6000:]
        assert "Resuming training from" in proc.stdout + proc.stderr
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
