#!/usr/bin/env bash
# RL stage (EAPO: GRPO with the evidence-aligned reward) with upstream verl, on one node or a Ray cluster.
#
# One node (8 GPUs):
#   TRAIN_FILES=data/rl/train.parquet bash local_scripts/run_rl.sh    # starts from outputs/rft/qwen2_5_vl_7b
# Qwen3-VL:
#   CONFIG=qwen3_vl_8b_rl TRAIN_FILES=... bash local_scripts/run_rl.sh  # starts from outputs/rft/qwen3_vl_8b
# Ray cluster of NNODES nodes (same repository path, environment and shared checkpoint folder on all):
#   head:     NNODES=4 ROLE=head   MODEL=... TRAIN_FILES=... bash local_scripts/run_rl.sh
#   workers:  NNODES=4 ROLE=worker HEAD_ADDR=<head ip> bash local_scripts/run_rl.sh
#   (the head starts Ray, waits for all NNODES nodes, then trains; workers join and block)
# Extra arguments are verl hydra overrides, e.g. `trainer.save_freq=20 data.max_prompt_length=16384`.
#
# Settings (environment):
#   CONFIG         recipe in EasyR1/configs (qwen2_5_vl_7b_rl | qwen3_vl_8b_rl), default qwen2_5_vl_7b_rl
#   MODEL          the policy to start from, a Hugging Face folder (default outputs/rft/<CONFIG without _rl>:
#                  where run_rft.sh writes the RFT checkpoint)
#   TRAIN_FILES    RL parquet(s), comma separated (build: `vretrver rl data build`); VAL_FILES default TRAIN_FILES
#   VARIANT        reward: eapo (paper, default) | public | text-only (use text-cot data for text-only)
#   PROJECT, EXP_NAME   logging / checkpoint names (checkpoints/PROJECT/EXP_NAME)
#   CKPT_DIR       checkpoint folder (default checkpoints/PROJECT/EXP_NAME; shared storage on a cluster)
#   LOGGER         comma list of console, wandb, swanlab, tensorboard (default console; wandb needs
#                  WANDB_API_KEY, swanlab needs `pip install swanlab`, tensorboard writes to TENSORBOARD_DIR)
#   RESUME         auto (default: latest checkpoint in CKPT_DIR) | disable | path to a global_step_N folder
#   GPUS_PER_NODE  default: all visible GPUs;  TP: vLLM tensor parallel size (default 4)
#   NNODES (1), ROLE (single | head | worker), HEAD_ADDR, RAY_PORT (6379)
#   MERGE=1        after training, merge the last checkpoint into a Hugging Face folder (CKPT_DIR/hf)
#   DEVICE=cpu     train on CPUs (tests, debugging; environment: `setup.sh --rl-cpu`, PYTHON=.venv-rl-cpu/bin/python):
#                  verl's gloo CPU platform (vretrver.integrations.verl.cpu_platform) and vLLM's CPU build;
#                  GPUS_PER_NODE (default 1) counts training processes, declared to Ray as logical GPUs; TP
#                  default 1; no vLLM sleep mode; VLLM_CPU_KVCACHE_SPACE (GiB, default 1) sizes vLLM's cache
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-qwen2_5_vl_7b_rl}"
NNODES="${NNODES:-1}"
ROLE="${ROLE:-$([ "$NNODES" -gt 1 ] && echo head || echo single)}"
RAY_PORT="${RAY_PORT:-6379}"
PYTHON="${PYTHON:-python}"
DEVICE="${DEVICE:-gpu}"
# every process that imports verl also imports our rollout-dump module: the training dumps
# (trainer.rollout_data_dir) then carry the reward's terms beside the score (vretrver/integrations/verl/rollout_dump.py)
export VERL_USE_EXTERNAL_MODULES="vretrver.integrations.verl.rollout_dump${VERL_USE_EXTERNAL_MODULES:+,$VERL_USE_EXTERNAL_MODULES}"

DEVICE_ARGS=()
if [ "$DEVICE" = "cpu" ]; then
  GPUS_PER_NODE="${GPUS_PER_NODE:-1}"
  TP="${TP:-1}"
  # every process that imports verl (trainer, Ray workers, vLLM workers) imports the CPU platform module
  export VERL_PLATFORM=cpu
  export VERL_USE_EXTERNAL_MODULES="vretrver.integrations.verl.cpu_platform${VERL_USE_EXTERNAL_MODULES:+,$VERL_USE_EXTERNAL_MODULES}"
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
  # vLLM's CPU build has no sleep mode: the engine keeps its weights and cache between rollouts. It loads
  # the model itself rather than starting on random weights: vLLM 0.28 keeps Qwen-VL's image
  # normalisation in buffers that random initialisation overwrites and no weight sync restores.
  DEVICE_ARGS=("+actor_rollout_ref.rollout.enable_sleep_mode=false"
               "actor_rollout_ref.rollout.free_cache_engine=false"
               "actor_rollout_ref.rollout.load_format=auto")
  # a local Ray started by the trainer (a cluster's nodes get --num-gpus from `ray start` below)
  # (and as many logical CPUs as verl's many mostly idle actors ask for: RAY_NUM_CPUS, default 16)
  if [ "$ROLE" = "single" ]; then
    DEVICE_ARGS+=("+ray_kwargs.ray_init.num_gpus=$GPUS_PER_NODE" "ray_kwargs.ray_init.num_cpus=${RAY_NUM_CPUS:-16}")
  fi
elif [ "$DEVICE" != "gpu" ]; then
  echo "error: DEVICE must be gpu or cpu, not '$DEVICE'" >&2
  exit 2
fi

if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE="$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)"
fi
if [ "$GPUS_PER_NODE" -lt 1 ]; then
  echo "error: no GPU found (verl 0.9.1 training needs CUDA GPUs); set GPUS_PER_NODE to override, or DEVICE=cpu" >&2
  exit 2
fi

if [ "$ROLE" = "worker" ]; then
  : "${HEAD_ADDR:?set HEAD_ADDR to the head node address}"
  exec ray start --address="${HEAD_ADDR}:${RAY_PORT}" --num-gpus="$GPUS_PER_NODE" --block
fi

MODEL="${MODEL:-$REPO/outputs/rft/${CONFIG%_rl}}"  # the RFT recipes' output_dir
: "${TRAIN_FILES:?set TRAIN_FILES to the RL parquet file(s)}"
VAL_FILES="${VAL_FILES:-$TRAIN_FILES}"
VARIANT="${VARIANT:-eapo}"
PROJECT="${PROJECT:-v-retrver}"
EXP_NAME="${EXP_NAME:-${CONFIG}_${VARIANT}}"
CKPT_DIR="${CKPT_DIR:-$REPO/checkpoints/$PROJECT/$EXP_NAME}"
LOGGER="${LOGGER:-console}"
RESUME="${RESUME:-auto}"
TP="${TP:-4}"

abs_list() {  # comma list of paths -> hydra list of absolute paths (remote nodes have other cwds)
  local out="" p
  IFS=',' read -ra parts <<< "$1"
  for p in "${parts[@]}"; do
    [ -e "$p" ] || { echo "error: no such file: $p" >&2; exit 2; }
    out="${out:+$out,}'$(cd "$(dirname "$p")" && pwd)/$(basename "$p")'"
  done
  echo "[$out]"
}

# Check the data before any GPU is touched.
IFS=',' read -ra _train <<< "$TRAIN_FILES"
"$PYTHON" -m vretrver.cli rl data validate "${_train[@]}"

case "$RESUME" in
  auto|disable) RESUME_ARGS=("trainer.resume_mode=$RESUME") ;;
  *) RESUME_ARGS=("trainer.resume_mode=resume_path" "trainer.resume_from_path=$(cd "$RESUME" && pwd)") ;;
esac

if [ "$ROLE" = "head" ]; then
  ray start --head --port="$RAY_PORT" --num-gpus="$GPUS_PER_NODE" --include-dashboard=false
  export RAY_ADDRESS="127.0.0.1:${RAY_PORT}"
  echo "waiting for $NNODES Ray nodes ..."
  until [ "$("$PYTHON" -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(sum(n["Alive"] for n in ray.nodes()))')" -ge "$NNODES" ]; do
    sleep 10
  done
fi

# verl defaults to flash-attention 2 and its padding-free path needs it; without the (optional) package,
# train with PyTorch's sdpa on padded batches instead of failing at model load.
ATTN_ARGS=()
if ! "$PYTHON" -c "import flash_attn" 2>/dev/null; then
  echo "note: flash-attn is not installed: training with sdpa attention and padded batches (slower)" >&2
  ATTN_ARGS=("+actor_rollout_ref.model.override_config.attn_implementation=sdpa"
             "actor_rollout_ref.model.use_remove_padding=false")
fi

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -m verl.trainer.main_ppo \
  --config-path="$REPO/EasyR1/configs" --config-name="$CONFIG" \
  actor_rollout_ref.model.path="$MODEL" \
  data.train_files="$(abs_list "$TRAIN_FILES")" \
  data.val_files="$(abs_list "$VAL_FILES")" \
  actor_rollout_ref.rollout.multi_turn.tool_config_path="$REPO/EasyR1/configs/tools.yaml" \
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$REPO/EasyR1/configs/agent_loop.yaml" \
  actor_rollout_ref.rollout.tensor_model_parallel_size="$TP" \
  reward.custom_reward_function.path="$REPO/EasyR1/reward_function/v_retrver.py" \
  reward.custom_reward_function.reward_kwargs.variant="$VARIANT" \
  trainer.project_name="$PROJECT" \
  trainer.experiment_name="$EXP_NAME" \
  trainer.default_local_dir="$CKPT_DIR" \
  trainer.logger="[${LOGGER}]" \
  trainer.nnodes="$NNODES" \
  trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  "${RESUME_ARGS[@]}" \
  "${ATTN_ARGS[@]}" \
  "${DEVICE_ARGS[@]}" \
  "$@"

if [ "${MERGE:-0}" = "1" ]; then
  bash "$REPO/local_scripts/merge_checkpoint.sh" "$CKPT_DIR"
fi
if [ "$ROLE" = "head" ]; then
  ray stop
fi
