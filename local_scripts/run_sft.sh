#!/usr/bin/env bash
# SFT (reasoning activation) with LLaMA-Factory: one node with all its GPUs, or many nodes.
#
#   bash local_scripts/run_sft.sh [CONFIG.yaml] [key=value ...]
#
# One node:   bash local_scripts/run_sft.sh
# Many nodes: run the same command on every node with
#             NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<host of rank 0> [MASTER_PORT=29500]
#
# The data comes from `vretrver data synthesize` + `vretrver data export` (LLaMA-Factory/data/).
# Settings (environment variables):
#   CONFIG            yaml recipe (default LLaMA-Factory/configs/qwen2_5_vl_7b_full_sft.yaml; Qwen3-VL:
#                     LLaMA-Factory/configs/qwen3_vl_8b_full_sft.yaml), or give it as the first argument
#   MODEL             override model_name_or_path          OUTPUT_DIR   override output_dir
#   DATASET           override dataset                     RUN_NAME     run name for the logger
#   GLOBAL_BATCH      global batch size (default 64); gradient_accumulation_steps is computed as
#                     GLOBAL_BATCH / (PER_DEVICE_BATCH x GPUs per node x NNODES)
#   PER_DEVICE_BATCH  per-GPU micro batch (default 1)
#   NPROC_PER_NODE    processes (GPUs) per node (default: all visible GPUs; 0: no GPU, one plain process)
#   LOGGER            none | wandb | swanlab | tensorboard (default none); WANDB_PROJECT, SWANLAB_PROJECT
#   RESUME            auto: continue from the last checkpoint in output_dir (default) | never: start over
#                     (overwrites output_dir) | a checkpoint folder to resume from
#   DRY_RUN=1         print the command instead of running it
# Further key=value arguments go to llamafactory-cli and override the yaml (e.g. deepspeed=null).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CONFIG="${CONFIG:-LLaMA-Factory/configs/qwen2_5_vl_7b_full_sft.yaml}"
if [[ $# -gt 0 && ( "$1" == *.yaml || "$1" == *.yml ) ]]; then
  CONFIG="$1"
  shift
fi
if [[ ! -f "$CONFIG" ]]; then
  echo "run_sft.sh: config not found: $CONFIG" >&2
  exit 2
fi

PYTHON="${PYTHON:-python}"
GLOBAL_BATCH="${GLOBAL_BATCH:-64}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
fi
GPUS="$NPROC_PER_NODE"
if [[ "$GPUS" -lt 1 ]]; then
  GPUS=1  # no GPU: one process (CPU runs, smoke tests)
fi

WORLD=$((GPUS * NNODES))
DENOM=$((PER_DEVICE_BATCH * WORLD))
if (( GLOBAL_BATCH % DENOM != 0 )); then
  echo "run_sft.sh: GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of PER_DEVICE_BATCH x GPUs = $DENOM" >&2
  exit 2
fi
GRAD_ACC=$((GLOBAL_BATCH / DENOM))

ARGS=("per_device_train_batch_size=$PER_DEVICE_BATCH" "gradient_accumulation_steps=$GRAD_ACC")
[[ -n "${MODEL:-}" ]] && ARGS+=("model_name_or_path=$MODEL")
[[ -n "${OUTPUT_DIR:-}" ]] && ARGS+=("output_dir=$OUTPUT_DIR")
[[ -n "${DATASET:-}" ]] && ARGS+=("dataset=$DATASET")
[[ -n "${RUN_NAME:-}" ]] && ARGS+=("run_name=$RUN_NAME")

case "${LOGGER:-none}" in
  none) ARGS+=("report_to=none") ;;
  wandb) ARGS+=("report_to=wandb") ;;
  tensorboard) ARGS+=("report_to=tensorboard") ;;
  swanlab)
    ARGS+=("report_to=none" "use_swanlab=true" "swanlab_project=${SWANLAB_PROJECT:-vretrver}")
    [[ -n "${RUN_NAME:-}" ]] && ARGS+=("swanlab_run_name=$RUN_NAME")
    ;;
  *) echo "run_sft.sh: LOGGER must be none, wandb, swanlab or tensorboard, got '${LOGGER}'" >&2; exit 2 ;;
esac

case "${RESUME:-auto}" in
  auto) ARGS+=("overwrite_output_dir=false") ;;  # LLaMA-Factory picks up the last checkpoint-* itself
  never) ARGS+=("overwrite_output_dir=true") ;;
  *)
    if [[ ! -d "$RESUME" ]]; then
      echo "run_sft.sh: RESUME must be auto, never or a checkpoint folder; not found: $RESUME" >&2
      exit 2
    fi
    ARGS+=("resume_from_checkpoint=$RESUME")
    ;;
esac

ARGS+=("$@")

# llamafactory-cli starts torchrun itself when FORCE_TORCHRUN is set, with these variables. With GPUs it
# always does (DeepSpeed wants a launcher, even for one GPU); without (NPROC_PER_NODE=0) one plain process.
export NNODES NODE_RANK MASTER_ADDR MASTER_PORT
if [[ "$NPROC_PER_NODE" -ge 1 || "$NNODES" -gt 1 ]]; then
  export FORCE_TORCHRUN=1 NPROC_PER_NODE="$GPUS"
else
  unset NPROC_PER_NODE
fi

echo "config $CONFIG | nodes $NNODES (rank $NODE_RANK) x $GPUS procs | global batch $GLOBAL_BATCH =" \
  "$PER_DEVICE_BATCH x $GRAD_ACC accumulation x $WORLD | logger ${LOGGER:-none} | resume ${RESUME:-auto}"
CMD=(llamafactory-cli train "$CONFIG" "${ARGS[@]}")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
exec "${CMD[@]}"
