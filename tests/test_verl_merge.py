"""local_scripts/merge_checkpoint.sh: a verl FSDP actor checkpoint -> a Hugging Face folder evaluation loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "local_scripts" / "merge_checkpoint.sh"


def fake_fsdp_checkpoint(model_dir: Path, ckpt: Path, step: int) -> Path:
    """The layout verl's FSDP checkpoint manager writes for one rank: shard, fsdp_config, huggingface/."""
    import torch
    from transformers import AutoModelForImageTextToText

    actor = ckpt / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    for f in model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, actor / "huggingface" / f.name)
    (ckpt / "latest_checkpointed_iteration.txt").write_text(str(step))
    return actor


@pytest.mark.slow
def test_merge_checkpoint_gives_a_folder_evaluation_loads(tmp_path, tiny_qwen25vl):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vretrver.engines.render import chat_prompt
    from vretrver.protocol import Conversation

    ckpt = tmp_path / "checkpoints" / "v-retrver" / "run"
    fake_fsdp_checkpoint(Path(tiny_qwen25vl), ckpt, step=3)
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        ["bash", str(SCRIPT), str(ckpt)], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = ckpt / "hf" / "global_step_3"
    assert f"-> {out}" in res.stdout and not Path(f"{out}.partial").exists()
    assert (ckpt / "hf" / "latest").resolve() == out.resolve()  # what the evaluation stage takes

    merged = AutoModelForImageTextToText.from_pretrained(out)
    original = AutoModelForImageTextToText.from_pretrained(tiny_qwen25vl)
    a, b = merged.state_dict(), original.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
    conv = Conversation(
        [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "q"}]}]
    )
    assert chat_prompt(AutoProcessor.from_pretrained(out), conv) == chat_prompt(
        AutoProcessor.from_pretrained(tiny_qwen25vl), conv
    )

    bad = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "nothing")], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "latest_checkpointed_iteration.txt" in bad.stderr
