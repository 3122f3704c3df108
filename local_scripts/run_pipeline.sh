#!/usr/bin/env bash
# The three training stages as one chain: samples -> teacher trajectories -> SFT data -> SFT -> rejection
# sampling -> RFT -> RL -> merged checkpoint -> evaluation, each stage run with the command the README
# documents, each stage's output being the next stage's input. Every command is printed and appended to
# OUT/commands.sh; a finished stage leaves OUT/.stages/<stage>.json, and a rerun resumes at the first
# unfinished stage. OUT/summary.md (and .json) reports per stage: wall time, the well-formed turn and
# tool-call rates before and after SFT, the acceptance rates, the RL reward per step, the final evaluation.
#
#   bash local_scripts/run_pipeline.sh                   # CPU: tiny random Qwen2.5-VL, oracle teacher, Tux Paint
#   FAMILY=qwen3_vl bash local_scripts/run_pipeline.sh   # the same with the tiny Qwen3-VL
#   MODEL=Qwen/Qwen2.5-VL-7B-Instruct ENGINE=openai TEACHER_MODEL=Qwen2.5-VL-72B-Instruct \
#     TEACHER_ARGS='{"base_url": "http://localhost:8000/v1"}' BENCHMARK=mbeir DATA_ROOT=/data/M-BEIR \
#     RETRIEVER=lamra N_SAMPLES=20000 K=5 RFT_K=8 bash local_scripts/run_pipeline.sh   # GPUs: the paper's chain
#
# Settings (environment):
#   MODEL        the base model: a checkpoint folder or hub id, or "tiny" (default: the tiny random model of
#                FAMILY from vretrver/testing/tiny_models.py; its numbers show mechanics, not quality)
#   FAMILY       qwen2_5_vl (default) | qwen3_vl: picks the LLaMA-Factory and verl recipes
#   BENCHMARK    tuxpaint (default) | mbeir | ...; DATA_ROOT its folder (not needed for tuxpaint); TASKS
#   TRAIN_SPLIT  split of the training queries (default train); TEST_SPLIT evaluation split (default test)
#   RETRIEVER    first stage for the samples and the evaluation (default offline; hash is instant)
#   N_SAMPLES    training samples (default 24); K candidates per sample and per evaluation window (3)
#   RFT_K        sampled trajectories per sample in rejection sampling (default 2), at RFT_TEMPERATURE
#                (1.0, the method's; 0.3 for a tiny model, whose sampled episodes break the format at 1.0)
#   PROBE_N      evaluation queries per task for the before / after SFT probes and the final evaluation (4)
#   ENGINE       the teacher: oracle (default; rule-based, synthetic trajectories from the ground truth,
#                teaches the format only) | openai | vllm | hf; TEACHER_MODEL (served name or folder;
#                default MODEL), TEACHER_ARGS (engine settings as JSON)
#   INFER_ENGINE engine of the student for probes, rejection sampling and evaluation (default hf);
#                INFER_ARGS its settings as JSON; MAX_NEW_TOKENS per turn (default 1024; 128 for tiny)
#   TRAIN_ARGS   key=value overrides for run_sft.sh / run_rft.sh (default on a machine without GPU: a short
#                CPU run, see below; with GPUs: none, the recipes' settings); SFT_STEPS
#                (120), RFT_STEPS (4), GLOBAL_BATCH (2), LR (tiny model: 1e-2 with the recipes' cosine
#                schedule and a 5 % warm-up: a random 64-wide model needs large steps to learn the format
#                in ~100 steps of batch 2; 2e-2 stalls, batch 1 learns too little; otherwise 1e-5)
#   RL_PYTHON    the python of the RL environment (default: .venv-rl with GPUs, else .venv-rl-cpu when it
#                exists; without one the RL stage is skipped and evaluation takes the RFT checkpoint);
#                RL_STEPS (default 2), RL_ARGS extra verl overrides (default on a CPU: 2 prompts x 4
#                rollouts, short sequences, one worker each, a checkpoint at the last step)
#   OUT          run folder (default runs/pipeline, relative to the current directory); STAGES (default all, in order) / SKIP: space- or
#                comma-separated stage names out of: samples teacher probe_base sft probe_sft rft_data rft
#                rl eval
#   PYTHON       the project's python (default .venv/bin/python, else python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-runs/pipeline}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # relative to the directory the chain is started from
cd "$ROOT"
ALL_STAGES="samples teacher probe_base sft probe_sft rft_data rft rl eval"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PY="$PYTHON"
export PATH="$(dirname "$(command -v "$PY")"):$PATH"  # llamafactory-cli of the same environment
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

FAMILY="${FAMILY:-qwen2_5_vl}"
case "$FAMILY" in
  qwen2_5_vl) RECIPE=qwen2_5_vl_7b; SFT_DATA=vretrver_sft; RFT_DATA=vretrver_rft ;;
  qwen3_vl) RECIPE=qwen3_vl_8b; SFT_DATA=vretrver_sft_qwen3vl; RFT_DATA=vretrver_rft_qwen3vl ;;
  *) echo "run_pipeline.sh: FAMILY must be qwen2_5_vl or qwen3_vl, got '$FAMILY'" >&2; exit 2 ;;
esac
MODEL="${MODEL:-tiny}"
if [[ "$MODEL" == "tiny" ]]; then
  MODEL="$("$PY" -c "import sys; from vretrver.testing.tiny_models import tiny_model_path; print(tiny_model_path(sys.argv[1]))" "$FAMILY" 2>/dev/null | tail -1)"
fi
TINY=0
MODEL_KIND="$MODEL"
if [[ -f "$MODEL/vretrver_tiny.json" ]]; then  # the marker file of vretrver/testing/tiny_models.py
  TINY=1
  MODEL_KIND="tiny random ${FAMILY} model (vretrver/testing/tiny_models.py)"
fi

BENCHMARK="${BENCHMARK:-tuxpaint}"
TRAIN_SPLIT="${TRAIN_SPLIT:-train}"
TEST_SPLIT="${TEST_SPLIT:-test}"
RETRIEVER="${RETRIEVER:-offline}"
N_SAMPLES="${N_SAMPLES:-24}"
K="${K:-3}"
RFT_K="${RFT_K:-2}"
# A tiny model writes the format only in its likeliest tokens: sampled at 1.0 no episode stays well formed.
RFT_TEMPERATURE="${RFT_TEMPERATURE:-$([[ "$TINY" == 1 ]] && echo 0.3 || echo 1.0)}"
PROBE_N="${PROBE_N:-4}"
ENGINE="${ENGINE:-oracle}"
TEACHER_MODEL="${TEACHER_MODEL:-$MODEL}"
INFER_ENGINE="${INFER_ENGINE:-hf}"
DATA="$OUT/data"
LF_DATA="$DATA/llamafactory"
RL_STEPS="${RL_STEPS:-2}"

GPUS="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
GPUS="${GPUS:-0}"
if [[ -z "${MAX_NEW_TOKENS:-}" ]]; then
  MAX_NEW_TOKENS=$([[ "$TINY" == 1 ]] && echo 128 || echo 1024)
fi
if [[ -z "${TRAIN_ARGS+x}" ]]; then
  if [[ "$GPUS" -ge 1 ]]; then
    TRAIN_ARGS=""
  else  # one plain CPU process: no DeepSpeed, fp32, a fixed number of steps
    TRAIN_ARGS="deepspeed=null bf16=false"
    if [[ "$TINY" == 1 ]]; then  # a large constant step: the random model has the format to learn from scratch
      TRAIN_ARGS+=" learning_rate=${LR:-1.0e-2} warmup_ratio=0.05"
    else
      TRAIN_ARGS+=" learning_rate=${LR:-1.0e-5}"
    fi
    TRAIN_ARGS+=" save_steps=100000 logging_steps=1 plot_loss=false preprocessing_num_workers=1"
    TRAIN_ARGS+=" dataloader_num_workers=0 cutoff_len=4096"
    export NPROC_PER_NODE=0 GLOBAL_BATCH="${GLOBAL_BATCH:-2}" PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-2}"
  fi
fi
SFT_STEPS="${SFT_STEPS:-120}"
RFT_STEPS="${RFT_STEPS:-4}"  # CPU: RFT trains on the few trajectories a tiny model gets accepted
read -ra TRAIN <<< "$TRAIN_ARGS"
SFT_EXTRA=("${TRAIN[@]}")
RFT_EXTRA=("${TRAIN[@]}")
if [[ "$GPUS" -lt 1 ]]; then
  SFT_EXTRA+=("max_steps=$SFT_STEPS")
  RFT_EXTRA+=("max_steps=$RFT_STEPS")
fi

DATA_ARGS=(--benchmark "$BENCHMARK")
[[ -n "${DATA_ROOT:-}" ]] && DATA_ARGS+=(--data-root "$DATA_ROOT")
[[ -n "${TASKS:-}" ]] && DATA_ARGS+=(--tasks "$TASKS")
INFER=(--engine "$INFER_ENGINE" --max-new-tokens "$MAX_NEW_TOKENS")
[[ -n "${INFER_ARGS:-}" ]] && INFER+=(--engine-args "$INFER_ARGS")
TEACHER=(--engine "$ENGINE" --model "$TEACHER_MODEL")
[[ -n "${TEACHER_ARGS:-}" ]] && TEACHER+=(--engine-args "$TEACHER_ARGS")

source "$ROOT/local_scripts/stages.sh"
check_stages run_pipeline.sh

MARKS="$OUT/.stages"
mkdir -p "$MARKS"
write_settings "$OUT/settings.json" model "$MODEL" model_kind "$MODEL_KIND" family "$FAMILY" benchmark "$BENCHMARK" \
  retriever "$RETRIEVER" n_samples "$N_SAMPLES" k "$K" rft_k "$RFT_K" rft_temperature "$RFT_TEMPERATURE" \
  probe_n "$PROBE_N" teacher_engine "$ENGINE" sft_steps "$SFT_STEPS" rft_steps "$RFT_STEPS" rl_steps "$RL_STEPS" \
  gpus "$GPUS" train_args "$TRAIN_ARGS"

mark() {  # mark STAGE STATUS SECONDS OUTPUT [REASON]
  "$PY" -c 'import json, sys; n, st, sec, out, why = sys.argv[1:6]; json.dump({"status": st, "seconds": float(sec), "output": out, **({"reason": why} if why else {})}, open(n, "w"))' \
    "$MARKS/$1.json" "$2" "$3" "$4" "${5:-}"
}
stage_done() { [[ -f "$MARKS/$1.json" ]] && grep -q '"status": "done"' "$MARKS/$1.json"; }
START=0
RAN=0  # set once a stage runs: every later stage then starts over, since its input has changed
outputs_of() {
  case "$1" in
    samples) echo "$SAMPLES $SAMPLES.stats.json" ;;
    teacher) echo "$TEACHER_OUT $LF_DATA/$SFT_DATA.json" ;;
    probe_base) echo "$OUT/probe_base" ;;
    sft) echo "$SFT_OUT" ;;
    probe_sft) echo "$OUT/probe_sft" ;;
    rft_data) echo "$RFT_SAMPLES $LF_DATA/$RFT_DATA.json" ;;
    rft) echo "$RFT_OUT" ;;
    rl) echo "$RL_OUT $DATA/rl" ;;
    eval) echo "$OUT/eval" ;;
  esac
}
begin() {  # begin STAGE: 0 when the stage should run now
  local s="$1" p
  wanted "$s" || { echo "== $s: not selected" >&2; return 1; }
  if [[ "$RAN" == 1 && -f "$MARKS/$s.json" ]]; then  # finished before, on inputs that have changed since
    rm -f "$MARKS/$s.json"
    for p in $(outputs_of "$s"); do rm -rf "$p"; done
  fi
  if stage_done "$s"; then echo "== $s: done before, skipped (to redo it, delete $MARKS/$s.json and its output)" >&2; return 1; fi
  RAN=1
  echo "== $s" >&2
  echo "# stage $s" >> "$OUT/commands.sh"
  START=$(date +%s)
  return 0
}
finish() { mark "$1" done "$(( $(date +%s) - START ))" "$2"; }

# RL environment: verl needs its own environment: .venv-rl with GPUs; without, .venv-rl-cpu and run_rl.sh's
# DEVICE=cpu. An environment counts when verl, vLLM and this project import in it.
rl_python() {
  local py="${RL_PYTHON:-}"
  if [[ -z "$py" ]]; then
    if [[ "$GPUS" -ge 1 ]]; then py="$ROOT/.venv-rl/bin/python"; else py="$ROOT/.venv-rl-cpu/bin/python"; fi
  fi
  [[ -x "$py" ]] && "$py" -c "import verl, vllm, vretrver" >/dev/null 2>&1 || return 1
  if [[ "$GPUS" -lt 1 ]] && ! grep -q 'DEVICE=cpu' "$ROOT/local_scripts/run_rl.sh"; then return 1; fi
  echo "$py"
}
RL_DEVICE=$([[ "$GPUS" -ge 1 ]] && echo gpu || echo cpu)

SAMPLES="$DATA/samples.jsonl"
TEACHER_OUT="$DATA/teacher"
SFT_OUT="$OUT/sft"
RFT_SAMPLES="$DATA/rft"
RFT_OUT="$OUT/rft"
RL_OUT="$OUT/rl"
EVAL_ARGS=("${DATA_ARGS[@]}" --split "$TEST_SPLIT" --limit "$PROBE_N" --retriever "$RETRIEVER"
           --top-n "$K" --window "$K" --cache-dir "$OUT/cache" "${INFER[@]}")

# 1. training samples: positive + K-1 hard negatives from the first stage.
if begin samples; then
  run "$PY" -m vretrver.cli data samples "${DATA_ARGS[@]}" --split "$TRAIN_SPLIT" --retriever "$RETRIEVER" \
    --k "$K" --total "$N_SAMPLES" --work-dir "$DATA/first_stage" --out "$SAMPLES"
  finish samples "$SAMPLES"
fi

# 2. teacher trajectories, filtered, exported as the SFT dataset.
if begin teacher; then
  run "$PY" -m vretrver.cli data synthesize "${TEACHER[@]}" --samples "$SAMPLES" --out "$TEACHER_OUT" \
    --max-new-tokens "$MAX_NEW_TOKENS"
  run "$PY" -m vretrver.cli data export --records "$TEACHER_OUT" --data-dir "$LF_DATA" --name "$SFT_DATA" \
    --model "$MODEL"
  finish teacher "$LF_DATA/$SFT_DATA.json"
fi

# 3. the base model on the probe episodes (greedy evaluation episodes of held-out queries).
if begin probe_base; then
  run "$PY" -m vretrver.cli eval "${EVAL_ARGS[@]}" --reranker "$MODEL" --out "$OUT/probe_base" --quiet
  finish probe_base "$OUT/probe_base"
fi

# 4. SFT on the teacher data.
if begin sft; then
  run env MODEL="$MODEL" OUTPUT_DIR="$SFT_OUT" DATASET="$SFT_DATA" \
    bash local_scripts/run_sft.sh "LLaMA-Factory/configs/${RECIPE}_full_sft.yaml" "dataset_dir=$LF_DATA" \
    "${SFT_EXTRA[@]}"
  finish sft "$SFT_OUT"
fi

# 5. the SFT checkpoint on the same probe episodes.
if begin probe_sft; then
  run "$PY" -m vretrver.cli eval "${EVAL_ARGS[@]}" --reranker "$SFT_OUT" --out "$OUT/probe_sft" --quiet
  finish probe_sft "$OUT/probe_sft"
fi

# 6. rejection sampling from the SFT checkpoint, exported as the RFT dataset.
if begin rft_data; then
  run "$PY" -m vretrver.cli data rft "${INFER[@]}" --model "$SFT_OUT" --samples "$SAMPLES" --k "$RFT_K" \
    --temperature "$RFT_TEMPERATURE" --out "$RFT_SAMPLES"
  if [[ "$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["all"]["accepted"])' "$RFT_SAMPLES/stats.json")" == 0 ]]; then
    echo "== rft_data: no sampled trajectory was accepted ($RFT_SAMPLES/stats.json): the SFT model does not" \
      "produce the format yet; train SFT longer (SFT_STEPS) or sample more (RFT_K), then run again" >&2
    exit 1
  fi

  run "$PY" -m vretrver.cli data export --records "$RFT_SAMPLES" --data-dir "$LF_DATA" --name "$RFT_DATA" \
    --model "$SFT_OUT"
  finish rft_data "$LF_DATA/$RFT_DATA.json"
fi

# 7. RFT: the SFT checkpoint fine-tuned on its own accepted trajectories.
if begin rft; then
  run env MODEL="$SFT_OUT" OUTPUT_DIR="$RFT_OUT" DATASET="$RFT_DATA" \
    bash local_scripts/run_rft.sh "LLaMA-Factory/configs/${RECIPE}_full_rft.yaml" "dataset_dir=$LF_DATA" \
    "${RFT_EXTRA[@]}"
  finish rft "$RFT_OUT"
fi

# 8. RL (EAPO) from the RFT checkpoint with verl, merged into a Hugging Face folder.
RAN_BEFORE_RL="$RAN"
if begin rl; then  # a stage skipped for want of an environment is tried again on the next run
  if ! RLPY="$(rl_python)"; then
    RAN="$RAN_BEFORE_RL"  # nothing ran: the evaluation's input has not changed
    why="no RL environment (verl, vLLM and vretrver importable in .venv-rl with GPUs, or in .venv-rl-cpu: setup.sh --rl-cpu); evaluation takes the RFT checkpoint"
    echo "== rl: skipped: $why" >&2
    mark rl skipped 0 "" "$why"
  else
    mkdir -p "$RL_OUT"
    run "$PY" -m vretrver.cli rl data build "$SAMPLES" --model "$RFT_OUT" --out "$DATA/rl/train.parquet" --quiet
    if [[ -z "${RL_ARGS+x}" && "$RL_DEVICE" == cpu ]]; then
      # A CPU run (the settings of tests/test_verl_fit_cpu.py): 2 prompts x 4 rollouts per step, short
      # sequences, one worker each, and for a tiny model lr 1e-3 without warm-up so few steps move it.
      RL_ARGS="data.train_batch_size=2 actor_rollout_ref.rollout.n=4 actor_rollout_ref.actor.ppo_mini_batch_size=2"
      RL_ARGS+=" data.max_prompt_length=4096 data.max_response_length=512 data.dataloader_num_workers=0"
      RL_ARGS+=" data.filter_overlong_prompts_workers=1 actor_rollout_ref.rollout.agent.num_workers=1"
      RL_ARGS+=" reward.num_workers=1 actor_rollout_ref.rollout.max_num_seqs=8"
      RL_ARGS+=" actor_rollout_ref.rollout.max_num_batched_tokens=8192"
      RL_ARGS+=" actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=128"
      RL_ARGS+=" transfer_queue.backend.SimpleStorage.num_data_storage_units=1"
      RL_ARGS+=" actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048 trainer.test_freq=-1"
      RL_ARGS+=" trainer.save_freq=$RL_STEPS"
      [[ "$TINY" == 1 ]] && RL_ARGS+=" actor_rollout_ref.actor.optim.lr=1e-3 actor_rollout_ref.actor.optim.lr_warmup_steps=0"
      export RAY_memory_monitor_refresh_ms=0
    fi
    read -ra RLX <<< "${RL_ARGS:-}"
    run env PYTHON="$RLPY" DEVICE="$RL_DEVICE" MODEL="$RFT_OUT" TRAIN_FILES="$DATA/rl/train.parquet" \
      CONFIG="${RECIPE}_rl" CKPT_DIR="$RL_OUT" MERGE=1 bash local_scripts/run_rl.sh \
      "trainer.total_training_steps=$RL_STEPS" "trainer.rollout_data_dir=$RL_OUT/rollouts" "${RLX[@]}" 2>&1 |
      tee "$RL_OUT/train.log"
    [[ "${PIPESTATUS[0]}" == 0 ]] || { echo "== rl: failed (log: $RL_OUT/train.log)" >&2; exit 1; }
    finish rl "$RL_OUT/hf/latest"
  fi
fi

# 9. evaluation of the final checkpoint: the merged RL model, else the RFT model.
FINAL="$RFT_OUT"
[[ -e "$RL_OUT/hf/latest/config.json" ]] && FINAL="$RL_OUT/hf/latest"
if begin eval; then
  run "$PY" -m vretrver.cli eval "${EVAL_ARGS[@]}" --reranker "$FINAL" --out "$OUT/eval" --quiet
  finish eval "$OUT/eval ($FINAL)"
fi

"$PY" -m vretrver.sft.pipeline summary "$OUT"
echo "summary: $OUT/summary.md"
