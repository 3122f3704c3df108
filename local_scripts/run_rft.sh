#!/usr/bin/env bash
# RFT (rejection-sampling fine-tuning) with LLaMA-Factory: the SFT model fine-tuned on its own accepted
# trajectories, same settings as SFT. One node or many nodes, exactly like run_sft.sh.
#
#   bash local_scripts/run_rft.sh [CONFIG.yaml] [key=value ...]
#
# Before: `vretrver data rft --model outputs/sft/qwen2_5_vl_7b ...` and
#         `vretrver data export --records outputs/data/rft --name vretrver_rft ...`.
# Default recipe: LLaMA-Factory/configs/qwen2_5_vl_7b_full_rft.yaml (starts from outputs/sft/qwen2_5_vl_7b;
# set MODEL to start from another SFT checkpoint). Every setting of run_sft.sh applies (GLOBAL_BATCH,
# NNODES / NODE_RANK / MASTER_ADDR, LOGGER, RESUME, DRY_RUN, ...).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONFIG="${CONFIG:-LLaMA-Factory/configs/qwen2_5_vl_7b_full_rft.yaml}"
exec bash "$HERE/run_sft.sh" "$@"
