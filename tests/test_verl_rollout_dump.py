"""The reward's terms in verl's training rollout dumps (vretrver.integrations.verl.rollout_dump)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vretrver.integrations.verl.rollout_dump import reward_terms

ROOT = Path(__file__).resolve().parent.parent
RL_PYTHON = Path(os.environ.get("VRETRVER_RL_CPU_PYTHON", ROOT / ".venv-rl-cpu" / "bin" / "python"))


def test_reward_terms_are_columns_in_the_dump_order():
    extra = [
        {"reward_extra_info": {"score": 1.0, "format": 0.5, "rank": 0.5, "n_valid_calls": 2}},
        {"reward_extra_info": {"format": 0.0, "why": "no answer"}},
        None,
    ]
    cols = reward_terms(extra, ["a", "b", "c"], ["c", "b", "a"])
    # the dump's own score column is kept; text entries are not terms; a missing term is None
    assert cols == {"format": [None, 0.0, 0.5], "rank": [None, None, 0.5], "n_valid_calls": [None, None, 2.0]}


@pytest.mark.skipif(
    not RL_PYTHON.exists(), reason=f"no CPU RL environment at {RL_PYTHON} (setup.sh --rl-cpu)"
)
def test_verl_trainer_dumps_the_reward_terms_beside_the_score(tmp_path, tiny_qwen25vl):
    proc = subprocess.run(
        [
            str(RL_PYTHON),
            str(ROOT / "tests" / "verl_scripts" / "rollout_dump.py"),
            str(tiny_qwen25vl),
            str(tmp_path),
        ],
        env={**os.environ, "VERL_USE_EXTERNAL_MODULES": "vretrver.integrations.verl.rollout_dump"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PATCHED True" in proc.stdout
    lines = [json.loads(x) for x in proc.stdout.split("PATCHED True", 1)[1].splitlines() if x.startswith("{")]
    assert [(x["output"], x["score"], x["step"]) for x in lines] == [
        ("answer s0_0_0", pytest.approx(1.1), 3),
        ("answer s0_1_0", pytest.approx(0.5), 3),
        ("answer s1_0_0", 0.0, 3),
    ]
    assert [(x["format"], x["rank"], x["tool"]) for x in lines] == [
        (0.5, 0.6, 0.0),
        (0.5, 0.0, 0.0),
        (None,) * 3,
    ]
    assert all("note" not in x for x in lines)
