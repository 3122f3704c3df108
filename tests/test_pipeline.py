"""The training chain: each stage's default output is the next stage's default input (recipes and launch
scripts), the Tux Paint training split, and ``local_scripts/run_pipeline.sh`` end to end on tiny models."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from readme_runs import (
    RL_ENV,
    LongRuns,
    chain_env,
    readme_chain_commands,
    start_readme_run,
    wait_run,
)

ROOT = Path(__file__).resolve().parent.parent
LF = ROOT / "LLaMA-Factory" / "configs"
RL = ROOT / "EasyR1" / "configs"
FAMILIES = {"qwen2_5_vl_7b": "qwen2_5_vl_7b", "qwen3_vl_8b": "qwen3_vl_8b"}


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _run_rl_defaults(tmp_path: Path, config: str, photos: dict) -> dict:
    """What run_rl.sh hands verl when MODEL and CKPT_DIR are not set (composed, not trained)."""
    from verl_rig import make_sample

    from vretrver.integrations.verl.dataset import RLDataConfig, write_rl_parquet

    data = tmp_path / "train.parquet"
    write_rl_parquet(data, [make_sample(photos)], RLDataConfig(), progress=False)
    python = tmp_path / "python"
    compose = ROOT / "tests" / "verl_scripts" / "compose_only.py"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{compose}" "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "composed.json"
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "CKPT_DIR", "PROJECT", "EXP_NAME")}
    env.update(
        PYTHON=str(python),
        COMPOSED_CONFIG=str(out),
        CONFIG=config,
        TRAIN_FILES=str(data),
        GPUS_PER_NODE="1",
        TP="1",
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "local_scripts" / "run_rl.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_stage_default_output_is_the_next_stage_default_input(tmp_path, family, sample_photos):
    sft = _yaml(LF / f"{family}_full_sft.yaml")
    rft = _yaml(LF / f"{family}_full_rft.yaml")
    rl = _yaml(RL / f"{family}_rl.yaml")
    # SFT out -> RFT base
    assert rft["model_name_or_path"] == sft["output_dir"] == f"outputs/sft/{family}"
    # RFT out -> RL policy, in the recipe and in what run_rl.sh passes when MODEL is not set
    assert rl["actor_rollout_ref"]["model"]["path"] == rft["output_dir"] == f"outputs/rft/{family}"
    composed = _run_rl_defaults(tmp_path, f"{family}_rl", sample_photos)
    assert composed["actor_rollout_ref"]["model"]["path"] == str(ROOT / rft["output_dir"])
    # RL out -> merge in -> evaluation: merge_checkpoint.sh reads the run's checkpoint folder and writes
    # CKPT_DIR/hf/global_step_N plus CKPT_DIR/hf/latest, the folder `vretrver eval --reranker` takes.
    ckpt = composed["trainer"]["default_local_dir"]
    assert ckpt == str(ROOT / "checkpoints" / "v-retrver" / f"{family}_rl_eapo")
    merge = (ROOT / "local_scripts" / "merge_checkpoint.sh").read_text()
    assert 'OUT_DIR="${3:-$CKPT_DIR/hf/global_step_${STEP}}"' in merge and "hf/latest" in merge
    # Nothing still points at the old RFT location.
    for path in [*LF.glob("*.yaml"), *RL.glob("*.yaml"), *(ROOT / "local_scripts").glob("*.sh")]:
        assert "checkpoints/rft" not in path.read_text(), path


def test_run_rft_defaults_to_the_sft_output(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "MODEL", "OUTPUT_DIR")}
    env.update(DRY_RUN="1", NPROC_PER_NODE="8")
    out = subprocess.run(
        ["bash", str(ROOT / "local_scripts" / "run_rft.sh")], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    config = re.search(r"llamafactory-cli train (\S+)", out.stdout).group(1)
    assert (
        _yaml(ROOT / config)["model_name_or_path"] == _yaml(LF / "qwen2_5_vl_7b_full_sft.yaml")["output_dir"]
    )


def test_tuxpaint_training_split_never_meets_the_test_queries():
    from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT, load_tuxpaint

    if not DEFAULT_ROOT.is_dir():
        pytest.skip("tuxpaint-stamps-default is not installed")
    for test, train, full in zip(
        load_tuxpaint(split="test"), load_tuxpaint(split="train"), load_tuxpaint(split="full"), strict=True
    ):
        a, b = {q.id for q in test.queries}, {q.id for q in train.queries}
        assert not a & b and a | b == {q.id for q in full.queries} and len(a) == 100


# ----------------------------------------------------------------------------- the run's numbers


def test_turn_rates_count_well_formed_turns_and_tool_calls(tmp_path):
    from vretrver.sft.pipeline import turn_rates

    def turn(kind: str, well: bool) -> dict:
        return {"role": "assistant", "text": "t", "parsed": {"kind": kind, "well_formed": well}}

    episodes = [  # 2 episodes, 4 assistant turns: 2 well formed, 2 tool calls (1 valid), 1 answer
        {
            "turns": [
                turn("tool_call", True),
                {"role": "tool", "tool": {"valid": True}},
                turn("answer", True),
            ],
            "answer": [1, 2],
        },
        {
            "turns": [
                turn("tool_call", False),
                {"role": "tool", "tool": {"valid": False}},
                turn("malformed", False),
            ],
            "answer": None,
        },
    ]
    folder = tmp_path / "trajectories"
    folder.mkdir()
    (folder / "t.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes) + '{"torn')
    assert turn_rates([folder]) == {
        "episodes": 2,
        "assistant_turns": 4,
        "well_formed_turn_rate": 0.5,
        "tool_call_turn_rate": 0.5,
        "valid_tool_call_rate": 0.25,
        "answered_rate": 0.5,
        "valid_calls_per_episode": 0.5,
    }
    # Synthesis records hold the same under "trajectory".
    (tmp_path / "r.jsonl").write_text(json.dumps({"trajectory": episodes[0]}) + "\n")
    assert turn_rates([tmp_path / "r.jsonl"])["well_formed_turn_rate"] == 1.0


def test_rl_steps_average_the_reward_terms_of_each_dumped_step(tmp_path):
    from vretrver.sft.pipeline import rl_steps

    for step, scores in ((1, [0.0, 1.0]), (2, [1.0, 1.0]), (10, [2.0, 0.0])):
        rows = [
            {"score": x, "format": 1.0, "rank": x / 2, "tool": 0.0, "n_valid_calls": 2 + x, "output": "..."}
            for x in scores
        ]
        (tmp_path / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps = rl_steps(tmp_path)
    assert [s["step"] for s in steps] == [1, 2, 10]  # numeric order, not text order
    assert steps[0] == {
        "step": 1,
        "rollouts": 2,
        "score": 0.5,
        "format": 1.0,
        "rank": 0.25,
        "tool": 0.0,
        "n_valid_calls": 2.5,
    }


def test_run_pipeline_selects_stages_skips_rl_without_an_environment_and_resumes(tmp_path, tiny_qwen25vl):
    out = tmp_path / "run"
    env = {"STAGES": "samples,teacher,rl", "RL_PYTHON": str(tmp_path / "no-python")}
    proc = _pipeline(out, Path(tiny_qwen25vl), "qwen2_5_vl", **env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _marker(out, "samples")["status"] == _marker(out, "teacher")["status"] == "done"
    rl = _marker(out, "rl")
    assert rl["status"] == "skipped" and "no RL environment" in rl["reason"]
    assert "== rl: skipped: no RL environment" in proc.stderr and "== sft: not selected" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["sft"] == {"status": "not run"}
    assert summary["teacher"]["sources"] == {"oracle (synthetic)": 24}
    md = (out / "summary.md").read_text()
    assert (
        "Stages skipped: 1 (rl)" in md and "synthetic" in md and "say nothing about retrieval quality" in md
    )
    commands = (out / "commands.sh").read_text()
    assert "data synthesize --engine oracle" in commands and "data export --records" in commands

    again = _pipeline(out, Path(tiny_qwen25vl), "qwen2_5_vl", **env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("done before, skipped") == 2 and "== rl: skipped" in again.stderr

    bad = _pipeline(out, Path(tiny_qwen25vl), "qwen2_5_vl", STAGES="samples,sfft")
    assert bad.returncode == 2 and "unknown stage 'sfft'" in bad.stderr


# ----------------------------------------------------------------------------- the whole chain on a CPU


def _pipeline(out: Path, model: Path, family: str, **env: str) -> subprocess.CompletedProcess:
    # The pipeline's own settings (and the stage scripts') come from this test only.
    own = {"MODEL", "CONFIG", "OUTPUT_DIR", "DATASET", "OUT", "STAGES", "SKIP", "TRAIN_ARGS", "RL_ARGS"}
    own |= {"RL_PYTHON", "SFT_STEPS", "RFT_K", "RFT_TEMPERATURE", "LR", "GLOBAL_BATCH", "PER_DEVICE_BATCH"}
    full = {k: v for k, v in os.environ.items() if k not in own}
    full.update(
        PYTHON=sys.executable,
        MODEL=str(model),
        FAMILY=family,
        OUT=str(out),
        RETRIEVER="hash",  # an instant first stage: the chain is the point here, not retrieval
        N_SAMPLES="24",
        K="3",
        PROBE_N="4",
        RFT_STEPS="4",
        RL_STEPS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_CACHE=str(out.parent / "hf_datasets"),
        WANDB_MODE="disabled",
        **env,
    )
    return subprocess.run(
        ["bash", str(ROOT / "local_scripts" / "run_pipeline.sh")],
        env=full,
        capture_output=True,
        text=True,
        cwd=out.parent,
        timeout=3600,
    )


def _marker(out: Path, stage: str) -> dict:
    return json.loads((out / ".stages" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def chains(readme_long_runs: LongRuns | None) -> LongRuns:
    """The README's long runs, started in the background when the session began (see readme_runs.py)."""
    assert readme_long_runs is not None  # started whenever a chain test is selected
    return readme_long_runs


def test_the_readme_shows_the_chain_for_both_families():
    commands = readme_chain_commands()
    assert len(commands) == 2
    assert "FAMILY=" not in commands[0] and "STAGES=" not in commands[0]  # every stage, Qwen2.5-VL
    assert "FAMILY=qwen3_vl" in commands[1] and "sft probe_sft" in commands[1]


@pytest.mark.chain
@pytest.mark.slow
@pytest.mark.skipif(
    not RL_ENV.exists(),
    reason="the RL stage needs the CPU RL environment (bash local_scripts/setup.sh --rl-cpu)",
)
@pytest.mark.parametrize("which", [0, 1], ids=["qwen2_5_vl-every-stage", "qwen3_vl-through-sft"])
def test_run_pipeline_chains_the_stages_on_tuxpaint_with_a_tiny_model(chains, which):
    cwd, command, code, log = chains.result(which)
    family = "qwen3_vl" if "FAMILY=qwen3_vl" in command else "qwen2_5_vl"
    stages = which == 1
    out = cwd / "runs" / "pipeline"
    assert code == 0, log[-10000:]
    summary = json.loads((out / "summary.json").read_text())
    commands = (out / "commands.sh").read_text()
    sft_data = "vretrver_sft" if family == "qwen2_5_vl" else "vretrver_sft_qwen3vl"
    print(f"\n{family}: " + ", ".join(f"{k} {v.get('seconds', '-')} s" for k, v in summary["stages"].items()))

    # Each stage's output is where the next stage looks, and the commands say so.
    samples = out / "data" / "samples.jsonl"
    assert len(samples.read_text().splitlines()) == 24
    assert f"--samples {samples}" in commands
    lf = out / "data" / "llamafactory"
    assert sft_data in json.loads((lf / "dataset_info.json").read_text())
    rows = json.loads((lf / f"{sft_data}.json").read_text())
    assert rows and all(r["source"] == "oracle (synthetic)" for r in rows)
    assert f"DATASET={sft_data}" in commands and f"dataset_dir={lf}" in commands
    assert (out / "sft" / "config.json").is_file() and (out / "sft" / "model.safetensors").is_file()
    assert f"--reranker {out / 'sft'}" in commands

    # Format learning: well-formed turns of the same probe episodes before and after SFT.
    before, after = summary["probe_base"], summary["probe_sft"]
    print(f"{family}: before SFT {before}\n{family}: after SFT {after}")
    assert before["episodes"] == after["episodes"] > 0
    assert after["well_formed_turn_rate"] > before["well_formed_turn_rate"]
    assert summary["teacher"]["sources"] == {"oracle (synthetic)": 24}
    md = (out / "summary.md").read_text()
    assert "say nothing about retrieval quality" in md
    assert "synthetic" in md

    if stages:  # the Qwen3-VL run stops after SFT
        assert not (out / ".stages" / "rft.json").exists() and not (out / "rft").exists()
        return

    # RFT: the SFT model's own accepted trajectories, trained from the SFT checkpoint.
    print(f"{family}: RFT sampling {summary['rft_data']}")
    assert summary["rft_data"]["accepted"] > 0
    assert f"--model {out / 'sft'}" in commands and f"MODEL={out / 'sft'}" in commands
    assert (out / "rft" / "config.json").is_file()

    # RL: verl's own trainer from the RFT checkpoint, N steps, a checkpoint, merged.
    assert _marker(out, "rl")["status"] == "done"
    steps = summary["rl"]["steps"]
    print(f"{family}: RL per step {steps}")
    assert [s["step"] for s in steps] == [1, 2] and all(s["rollouts"] == 8 for s in steps)
    for s in steps:  # the EAPO reward and its terms, per step
        assert {"score", "format", "rank", "tool"} <= set(s) and 0.0 <= s["score"] <= 1.2 + 1e-6
    from test_verl_fit_cpu import step_metrics

    logged = step_metrics((out / "rl" / "train.log").read_text())
    assert sorted(logged) == [1, 2]
    for m in logged.values():  # verl's own metrics: a finite update; vLLM sampled with the actor's weights
        assert math.isfinite(m["actor/pg_loss"]) and math.isfinite(m["actor/grad_norm"])
        assert m["training/rollout_probs_diff_mean"] < 0.05
    assert (out / "rl" / "global_step_2" / "actor").is_dir()
    final = out / "rl" / "hf" / "latest"
    assert (final / "config.json").is_file() and f"MODEL={out / 'rft'}" in commands
    _vision_encoder_unchanged(out / "rft", final)
    # The final checkpoint is evaluated by `vretrver eval`.
    assert "-m vretrver.cli eval" in commands and f"--reranker {final} --out {out / 'eval'}" in commands
    assert json.loads((out / "eval" / "summary.json").read_text())
    assert "Evaluation of the final checkpoint" in md

    # A second run finds every stage finished and only rewrites the summary.
    code, log = wait_run(start_readme_run(cwd, command), cwd)
    assert code == 0, log[-3000:]
    assert log.count("done before, skipped") == 9


@pytest.mark.chain
@pytest.mark.slow
def test_run_nano_small_setting_learns_to_zoom_and_beats_chance(chains):
    """The README's small V-Retrver-nano run (a few minutes): from a random 1.5M-parameter model, the crop
    warm-up and SFT through LLaMA-Factory teach the protocol, reading each crop and judging it against the
    query, so R@1 on nano_colour's test queries is far above chance (0.2) and above the first stage; with
    a tool budget of 0 the first tool call ends the episode and the first stage's order stands."""
    cwd, command, code, log = chains.result("nano")
    out = cwd / "runs" / "nano"
    assert code == 0, log[-10000:]
    summary = json.loads((out / "summary.json").read_text())
    print("\nnano: " + json.dumps(summary["R@1"]) + "; stages " + json.dumps(summary["stages"]))
    n_train = int(re.search(r"N_TRAIN=(\d+)", command).group(1))
    assert summary["teacher"]["kept"] == n_train
    assert summary["sft"]["last_loss"] < summary["sft"]["first_loss"] / 4
    tools, no_tools = summary["eval"]["sft_with_tools"], summary["eval"]["sft_without_tools"]
    assert tools["well_formed_turn_rate"] >= 0.9 and tools["answered_rate"] >= 0.9
    assert no_tools["answered_rate"] == 0
    r1 = summary["R@1"]
    assert r1["sft_without_tools"] == r1["first_stage"]
    # 20 of 40 right: a chance of 0.002 % for a ranker that guesses (k = 5).
    assert r1["sft_with_tools"] >= 0.5 and r1["sft_with_tools"] > r1["first_stage"]
    # It got there by zooming: each crop's colour named right.
    named = right = 0
    run = out / "eval_tools"

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    samples = {s["id"]: s for s in rows(run / "samples" / "nano_colour.jsonl")}
    for episode in rows(run / "trajectories" / "nano_colour.jsonl"):
        sample = samples[episode["sample_id"]]
        ids = [c["id"] for c in sample["candidates"]]
        text = " ".join(t.get("text", "") for t in episode["turns"] if t["role"] == "assistant")
        for j, colour in re.findall(r"Candidate (\d): ([a-z]+)\.", text):
            named += 1
            right += sample["meta"]["detail"]["labels"][ids[int(j) - 1]] == colour
    queries = tools["tasks"]["nano_colour"]["n_queries"]
    assert named >= 4 * queries and right >= 0.9 * named
    assert summary["stages"]["rl"]["status"] == "skipped"


def _vision_encoder_unchanged(start: Path, trained: Path) -> None:
    """The RL update left the frozen vision encoder as it was."""
    import torch
    from transformers import AutoModelForImageTextToText

    a = AutoModelForImageTextToText.from_pretrained(start, dtype=torch.float32).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(trained, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    vision = {k for k in a if ".visual." in f".{k}"}
    assert vision and not moved & vision  # (the language model moves at least by weight decay: not a test)
    assert any("visual" not in k for k in moved)


def test_gpu_sft_check_runs_the_recipe_with_deepspeed_on_one_gpu_mocked_gpu(tmp_path, tiny_qwen25vl):
    """local_scripts/gpu_sft_check.sh on a machine with no GPU here: a stand-in nvidia-smi lists one, and
    DRY_RUN=1 has run_sft.sh print the LLaMA-Factory command instead of training (a GPU run is the script's
    own job). What the test shows: the chain's SFT stage gets the recipe's DeepSpeed ZeRO-3 config and bf16,
    one torchrun process, batch 2, the step count; and without a GPU the script refuses to start."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: stand-in (UUID: GPU-0)'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in chain_env(tmp_path).items() if k not in ("CUDA_VISIBLE_DEVICES", "DRY_RUN")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHON=sys.executable, MODEL=str(tiny_qwen25vl),
        DRY_RUN="1", STAGES="samples teacher sft", SFT_STEPS="7",
    )  # fmt: skip
    script = str(ROOT / "local_scripts" / "gpu_sft_check.sh")
    proc = subprocess.run(
        ["bash", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [command] = [line for line in proc.stdout.splitlines() if line.startswith("llamafactory-cli train")]
    assert "qwen2_5_vl_7b_full_sft.yaml" in command and "max_steps=7" in command
    assert "deepspeed=null" not in command and "bf16=false" not in command  # the recipe's ZeRO-3 and bf16
    assert "per_device_train_batch_size=2" in command and "gradient_accumulation_steps=1" in command
    assert "nodes 1 (rank 0) x 1 procs | global batch 2" in proc.stdout
    recipe = _yaml(LF / "qwen2_5_vl_7b_full_sft.yaml")
    assert recipe["deepspeed"].endswith("ds_z3_config.json") and recipe["bf16"] is True

    env["PATH"] = "/usr/bin:/bin"  # no nvidia-smi
    proc = subprocess.run(["bash", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no GPU" in proc.stderr
