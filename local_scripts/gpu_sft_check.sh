#!/usr/bin/env bash
# The SFT stage on one GPU with the recipe's own settings for the hardware: LLaMA-Factory under torchrun with
# the recipe's DeepSpeed ZeRO-3 config and bf16, on the tiny random model, from oracle (synthetic) teacher data
# on Tux Paint's training split. A few minutes on one GPU.
#
#   bash local_scripts/gpu_sft_check.sh                      # tiny Qwen2.5-VL
#   FAMILY=qwen3_vl bash local_scripts/gpu_sft_check.sh      # tiny Qwen3-VL
#
# What it proves: ZeRO-3 shards, trains and gathers the model into a Hugging Face folder that `vretrver eval`
# loads; the vision encoder stays frozen (checked weight by weight); the format is learned (well-formed turns
# before / after SFT, as in the CPU chain). The tiny model's numbers say nothing about retrieval quality.
# Needs the SFT environment (`bash local_scripts/setup.sh --gpu --create` builds .venv-sft) and the Tux Paint
# stamps (`setup.sh` installs them). The run goes to OUT (default runs/gpu_sft, relative to the current
# directory); its summary is OUT/summary.md. Settings: FAMILY, SFT_STEPS (120), OUT, PYTHON (.venv-sft/bin/python),
# STAGES (default: samples teacher probe_base sft probe_sft).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv-sft/bin/python}"
OUT="${OUT:-runs/gpu_sft}"
if ! command -v nvidia-smi >/dev/null || [[ "$(nvidia-smi -L 2>/dev/null | wc -l)" -lt 1 ]]; then
  echo "gpu_sft_check.sh: no GPU (nvidia-smi lists none); the CPU chain is local_scripts/run_pipeline.sh" >&2
  exit 2
fi
# One GPU, the tiny model: batch 2 as on the CPU, lr 1e-2 (a random 64-wide model learns the format only with
# large steps), a fixed number of steps. Everything else (deepspeed ZeRO-3, bf16, frozen vision) is the recipe's.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" NPROC_PER_NODE=1 GLOBAL_BATCH=2 PER_DEVICE_BATCH=2
export TRAIN_ARGS="max_steps=${SFT_STEPS:-120} learning_rate=1.0e-2 warmup_ratio=0.05 save_steps=100000 logging_steps=1 plot_loss=false cutoff_len=4096"
export STAGES="${STAGES:-samples teacher probe_base sft probe_sft}" RETRIEVER="${RETRIEVER:-hash}"
OUT="$OUT" PYTHON="$PYTHON" bash "$ROOT/local_scripts/run_pipeline.sh"
if [[ "${DRY_RUN:-0}" == "1" ]]; then exit 0; fi

# The recipe freezes the vision encoder: the SFT checkpoint's vision weights equal the base model's.
"$PYTHON" - "$(cd "$OUT" && pwd)" <<'EOF'
import json, sys
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

out = Path(sys.argv[1])
base = json.loads((out / "settings.json").read_text())["model"]
a = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32).state_dict()
b = AutoModelForImageTextToText.from_pretrained(out / "sft", dtype=torch.float32).state_dict()
vision = [k for k in a if ".visual." in f".{k}"]
# compared in bf16: the recipe trains and saves in bf16, the tiny base model is float32
moved = [k for k in a if not torch.equal(a[k].bfloat16(), b[k].bfloat16())]
frozen = vision and not set(moved) & set(vision)
print(f"vision tensors {len(vision)}, moved {len(set(moved) & set(vision))}; language tensors moved {len(moved)}")
print("vision encoder frozen:", bool(frozen))
sys.exit(0 if frozen and moved else 1)
EOF
echo "summary: $OUT/summary.md"
