#!/usr/bin/env bash
# V-Retrver-nano on a CPU: the nano model (vretrver/nano) trained by the project's own stages on the nano
# benchmark, then evaluated with and without tools. Each stage runs the command the README documents;
# commands go to OUT/commands.sh, a finished stage leaves OUT/.stages/<stage>.json and a rerun resumes at
# the first unfinished stage. OUT/summary.json (python -m vretrver.nano.pipeline summary) reports R@1 of
# the first stage, of the reranker with tools and with tools disabled, the SFT loss, the RL reward per
# step and the benchmark's checks. Numbers are on a synthetic benchmark.
#
#   bash local_scripts/run_nano.sh
#   STOP_SHARE=0 N_TRAIN=800 CROP_STEPS=1000 SFT_STEPS=300 TEST_N=40 RL_STEPS=0 bash local_scripts/run_nano.sh   # the tests
#
# Stages: samples (nano train queries, their k-image galleries, hash first stage) -> teacher (NanoTeacher
# trajectories: a crop of every candidate's mark, or of those up to the match in STOP_SHARE of them, each
# named and judged against the query; exported for LLaMA-Factory) -> crops (a warm-up on the crops alone) -> sft (LLaMA-Factory, the Qwen2.5-VL recipe with
# CPU settings) -> eval_tools / eval_no_tools
# (vretrver eval --benchmark nano, tool budget k / 0) -> rl (verl on CPU, EAPO reward; when .venv-rl-cpu
# exists and RL_STEPS > 0) -> eval_rl_tools / eval_rl_no_tools -> summary.
#
# Settings (environment):
#   MODEL       base checkpoint (default: the nano model, built on first use by vretrver.nano.model)
#   TASKS       nano tasks (default nano_colour); K candidates per query (5)
#   PROFILE     prompt profile of the teacher, the export, the evaluation and the RL data (default nano:
#               the v-retrver tools and turns with a short system prompt; the v-retrver profile's tool
#               schemas and instructions would make most of a small model's context)
#   N_TRAIN     training queries (default 2400); TEST_N evaluation queries per task (default 200, the test split)
#   STOP_SHARE  share of the teacher's trajectories that answer at the match instead of cropping every
#               candidate (default 0.3): SFT leaves both endings possible, RL picks by the reward
#   CROP_STEPS  warm-up steps on the crops (1500; 0 skips the warm-up), CROP_BATCH rows a step (32), CROP_MIX
#               the share of warm-up rows drawn during SFT (0.5; 0 for the trajectories alone)
#   SFT_STEPS   optimiser steps (600); BATCH per step (4); LR (1e-3) held constant after WARMUP steps (20):
#               a random model, vision tower included, learns from scratch (the recipe's cosine decay to 0
#               over a few hundred steps ends before the format is learned)
#   SFT_ARGS    further key=value overrides for LLaMA-Factory
#   THREADS     torch / OpenMP threads per process (default 1: on a shared or busy CPU two threads that
#               wait for each other made LLaMA-Factory's step 4-7x slower)
#   RL_STEPS    verl steps (default 20; 0 skips RL); RL_PYTHON (default .venv-rl-cpu/bin/python); RL_ARGS
#   MAX_NEW_TOKENS per turn (96); OUT run folder (runs/nano, relative to the current directory); STAGES /
#               SKIP as in run_pipeline.sh
#   PYTHON      the project's python (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-runs/nano}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # relative to the directory the run is started from
cd "$ROOT"
ALL_STAGES="samples teacher crops sft eval_tools eval_no_tools rl eval_rl_tools eval_rl_no_tools"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PY="$PYTHON"
export PATH="$(dirname "$(command -v "$PY")"):$PATH"  # llamafactory-cli of the same environment
THREADS="${THREADS:-1}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

MODEL="${MODEL:-$("$PY" -c 'from vretrver.nano.model import nano_model_path; print(nano_model_path())' | tail -1)}"
TASKS="${TASKS:-nano_colour}"
PROFILE="${PROFILE:-nano}"
K="${K:-5}"
N_TRAIN="${N_TRAIN:-2400}"
STOP_SHARE="${STOP_SHARE:-0.3}"
TEST_N="${TEST_N:-200}"
SFT_STEPS="${SFT_STEPS:-600}"
CROP_STEPS="${CROP_STEPS:-1500}"
CROP_BATCH="${CROP_BATCH:-32}"
CROP_MIX="${CROP_MIX:-0.5}"
BATCH="${BATCH:-4}"
LR="${LR:-1.0e-3}"
WARMUP="${WARMUP:-20}"
RL_STEPS="${RL_STEPS:-20}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-96}"
DATA="$OUT/data"
LF_DATA="$DATA/llamafactory"
SAMPLES="$DATA/samples.jsonl"
CROPS_OUT="$OUT/crops"
SFT_OUT="$OUT/sft"
RL_OUT="$OUT/rl"

source "$ROOT/local_scripts/stages.sh"
check_stages run_nano.sh

MARKS="$OUT/.stages"
mkdir -p "$MARKS"
write_settings "$OUT/settings.json" model "$MODEL" tasks "$TASKS" profile "$PROFILE" k "$K" n_train "$N_TRAIN" stop_share "$STOP_SHARE" test_n "$TEST_N" \
  crop_steps "$CROP_STEPS" crop_batch "$CROP_BATCH" crop_mix "$CROP_MIX" sft_steps "$SFT_STEPS" batch "$BATCH" lr "$LR" warmup "$WARMUP" rl_steps "$RL_STEPS" threads "$THREADS" \
  sft_args "${SFT_ARGS:-}"

START=0
RAN=0  # once a stage runs, every later stage starts over: its input has changed
begin() {
  local s="$1"
  wanted "$s" || { echo "== $s: not selected" >&2; return 1; }
  if [[ "$RAN" == 1 && -f "$MARKS/$s.json" ]]; then rm -f "$MARKS/$s.json"; fi
  if [[ -f "$MARKS/$s.json" ]]; then echo "== $s: done before, skipped (delete $MARKS/$s.json to redo it)" >&2; return 1; fi
  RAN=1
  echo "== $s" >&2
  echo "# stage $s" >> "$OUT/commands.sh"
  START=$(date +%s)
  return 0
}
finish() {  # finish STAGE STATUS [REASON]
  "$PY" -c 'import json, sys; json.dump({"status": sys.argv[2], "seconds": float(sys.argv[3]), **({"reason": sys.argv[4]} if sys.argv[4] else {})}, open(sys.argv[1], "w"))' \
    "$MARKS/$1.json" "${2:-done}" "$(( $(date +%s) - START ))" "${3:-}"
}

EVAL=(--benchmark nano --tasks "$TASKS" --split test --limit "$TEST_N" --retriever hash --top-n "$K"
      --window "$K" --reader-args "k=$K" --profile "$PROFILE" --engine hf --max-new-tokens "$MAX_NEW_TOKENS"
      --cache-dir "$OUT/cache" --quiet)

# 1. training samples: each nano query's own gallery (k images, one positive), in the hash first stage's order.
if begin samples; then
  rm -rf "$DATA/first_stage"
  run "$PY" -m vretrver.cli data samples --benchmark nano --tasks "$TASKS" --split train --limit "$N_TRAIN" \
    --retriever hash --k "$K" --total "$N_TRAIN" --work-dir "$DATA/first_stage" --out "$SAMPLES"
  finish samples
fi

# 2. NanoTeacher trajectories, exported as the SFT dataset.
if begin teacher; then
  rm -rf "$DATA/teacher" "$LF_DATA"
  run "$PY" -m vretrver.nano.pipeline synthesize --samples "$SAMPLES" --out "$DATA/teacher" --max-tool-calls "$K" \
    --profile "$PROFILE" --stop-share "$STOP_SHARE"
  run "$PY" -m vretrver.cli data export --records "$DATA/teacher" --data-dir "$LF_DATA" --name nano_sft \
    --model "$MODEL" --profile "$PROFILE"
  finish teacher
fi

# 3. SFT with LLaMA-Factory: one CPU process, fp32, every module trained (the recipe freezes the vision
#    tower, right for a pretrained model only), no gradient checkpointing (it recomputes the forward pass
#    to save memory a 1.5M-parameter model does not need). First a warm-up (vretrver/nano/warmup.py): each
#    crop after the turn that asked for it, then the teacher's verdict on it (CROP_STEPS; 0 skips it): on
#    whole trajectories a random model learns the format but neither to read the crops nor to judge them.
#    Then the trajectories, from the warm-up's checkpoint, with warm-up rows still in the mix.
sft() {  # sft DATASET BASE OUTPUT_DIR STEPS BATCH [KEY=VALUE ...]
  read -ra EXTRA <<< "${SFT_ARGS:-}"
  local dataset="$1" base="$2" out="$3" steps="$4" batch="$5"
  shift 5
  EXTRA=("$@" "${EXTRA[@]}")
  run env NPROC_PER_NODE=0 GLOBAL_BATCH="$batch" PER_DEVICE_BATCH="$batch" RESUME=never MODEL="$base" \
    OUTPUT_DIR="$out" DATASET="$dataset" bash local_scripts/run_sft.sh \
    LLaMA-Factory/configs/qwen2_5_vl_7b_full_sft.yaml "dataset_dir=$LF_DATA" deepspeed=null bf16=false \
    freeze_vision_tower=false freeze_multi_modal_projector=false disable_gradient_checkpointing=true \
    "learning_rate=$LR" lr_scheduler_type=constant_with_warmup "warmup_steps=$WARMUP" "max_steps=$steps" \
    save_steps=100000 logging_steps=10 plot_loss=false preprocessing_num_workers=1 dataloader_num_workers=0 \
    cutoff_len=4096 "${EXTRA[@]}"
}
if begin crops; then
  rm -rf "$CROPS_OUT"
  if [[ "$CROP_STEPS" -lt 1 ]]; then
    finish crops skipped "CROP_STEPS=0"
  else
    run "$PY" -m vretrver.nano.pipeline crops --data-dir "$LF_DATA" --source nano_sft --name nano_crops
    sft nano_crops "$MODEL" "$CROPS_OUT" "$CROP_STEPS" "$CROP_BATCH"
    finish crops
  fi
fi
if begin sft; then
  # From the warm-up when there is one, with its rows still in the mix (CROP_MIX of the rows drawn):
  # without them the verdict, a token or two per turn, is forgotten while the trajectories' format is learned.
  BASE="$MODEL"
  DATASETS=nano_sft
  MIX=()
  if [[ -e "$CROPS_OUT/config.json" ]]; then
    BASE="$CROPS_OUT"
    if [[ "$CROP_MIX" != 0 ]]; then
      DATASETS=nano_sft,nano_crops
      MIX=(mix_strategy=interleave_under "interleave_probs=$("$PY" -c 'import sys; m = float(sys.argv[1]); print(f"{1 - m:g},{m:g}")' "$CROP_MIX")")
    fi
  fi
  sft "$DATASETS" "$BASE" "$SFT_OUT" "$SFT_STEPS" "$BATCH" "${MIX[@]}"
  finish sft
fi

# 4. the SFT checkpoint on the test split: a crop per candidate allowed, then no tool call allowed.
evaluate() {  # evaluate STAGE CHECKPOINT BUDGET
  if begin "$1"; then
    rm -rf "$OUT/$1"
    run "$PY" -m vretrver.cli eval "${EVAL[@]}" --reranker "$2" --max-tool-calls "$3" --out "$OUT/$1"
    finish "$1"
  fi
}
evaluate eval_tools "$SFT_OUT" "$K"
evaluate eval_no_tools "$SFT_OUT" 0

# 5. RL (EAPO reward) with verl on the CPU, from the SFT checkpoint, merged into a Hugging Face folder.
RLPY="${RL_PYTHON:-$ROOT/.venv-rl-cpu/bin/python}"
if begin rl; then
  if [[ "$RL_STEPS" -lt 1 ]]; then
    finish rl skipped "RL_STEPS=0"
  elif ! [[ -x "$RLPY" ]] || ! "$RLPY" -c "import verl, vllm, vretrver" >/dev/null 2>&1; then
    finish rl skipped "no RL environment ($RLPY with verl, vLLM and vretrver: setup.sh --rl-cpu)"
  else
    rm -rf "$RL_OUT" && mkdir -p "$RL_OUT"
    run "$PY" -m vretrver.cli rl data build "$SAMPLES" --model "$SFT_OUT" --out "$DATA/rl/train.parquet" \
      --profile "$PROFILE" --max-tool-calls "$K" --quiet
    if [[ -z "${RL_ARGS+x}" ]]; then  # the CPU settings of run_pipeline.sh, with room for k crops, fp32
      RL_ARGS="$("$PY" -m vretrver.nano.pipeline rl-args --steps "$RL_STEPS")"
      export RAY_memory_monitor_refresh_ms=0
    fi
    read -ra RLX <<< "${RL_ARGS:-}"
    set +e
    run env PYTHON="$RLPY" DEVICE=cpu MODEL="$SFT_OUT" TRAIN_FILES="$DATA/rl/train.parquet" \
      CONFIG=qwen2_5_vl_7b_rl CKPT_DIR="$RL_OUT" MERGE=1 bash local_scripts/run_rl.sh \
      "trainer.total_training_steps=$RL_STEPS" "trainer.rollout_data_dir=$RL_OUT/rollouts" "${RLX[@]}" 2>&1 |
      tee "$RL_OUT/train.log"
    status="${PIPESTATUS[0]}"
    set -e
    [[ "$status" == 0 ]] || { echo "== rl: failed (log: $RL_OUT/train.log)" >&2; exit 1; }
    finish rl
  fi
fi
if [[ -e "$RL_OUT/hf/latest/config.json" ]]; then
  evaluate eval_rl_tools "$RL_OUT/hf/latest" "$K"
  evaluate eval_rl_no_tools "$RL_OUT/hf/latest" 0
fi

"$PY" -m vretrver.nano.pipeline summary "$OUT"
echo "summary: $OUT/summary.json"
