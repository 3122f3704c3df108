#!/usr/bin/env bash
# Merge a verl FSDP checkpoint of the RL stage into a Hugging Face folder that evaluation loads
# (`vretrver eval --reranker OUT_DIR`), with verl's own model merger.
#
#   bash local_scripts/merge_checkpoint.sh CKPT_DIR [STEP] [OUT_DIR]
#
# CKPT_DIR  the run's trainer.default_local_dir (holds latest_checkpointed_iteration.txt, global_step_N/)
# STEP      the step to merge (default: the latest checkpoint)
# OUT_DIR   default: CKPT_DIR/hf/global_step_STEP, and CKPT_DIR/hf/latest then points at it (the folder
#           the next stage, `vretrver eval --reranker CKPT_DIR/hf/latest`, takes)
set -euo pipefail
PYTHON="${PYTHON:-python}"
CKPT_DIR="${1:?usage: merge_checkpoint.sh CKPT_DIR [STEP] [OUT_DIR]}"
if [ -n "${2:-}" ]; then
  STEP="$2"
elif [ -f "$CKPT_DIR/latest_checkpointed_iteration.txt" ]; then
  STEP="$(cat "$CKPT_DIR/latest_checkpointed_iteration.txt")"
else
  echo "error: $CKPT_DIR has no latest_checkpointed_iteration.txt; give the STEP" >&2
  exit 2
fi
ACTOR="$CKPT_DIR/global_step_${STEP}/actor"
OUT_DIR="${3:-$CKPT_DIR/hf/global_step_${STEP}}"
[ -f "$ACTOR/fsdp_config.json" ] || { echo "error: $ACTOR is not an FSDP actor checkpoint" >&2; exit 2; }

# Write next to the target and rename, so a crash never leaves a half-written model folder behind.
TMP_DIR="${OUT_DIR%/}.partial"
rm -rf "$TMP_DIR"
"$PYTHON" -m verl.model_merger merge --backend fsdp --local_dir "$ACTOR" --target_dir "$TMP_DIR"

# The folder must load the way evaluation loads it: model config, processor and its chat template.
"$PYTHON" - "$TMP_DIR" <<'PY'
import sys
from transformers import AutoConfig, AutoProcessor

path = sys.argv[1]
config = AutoConfig.from_pretrained(path)
processor = AutoProcessor.from_pretrained(path)
if not getattr(processor, "chat_template", None):
    sys.exit(f"error: {path}: the merged processor has no chat template")
print(f"{path}: {config.model_type}, processor {type(processor).__name__}: ok")
PY
rm -rf "$OUT_DIR"
mkdir -p "$(dirname "$OUT_DIR")"
mv "$TMP_DIR" "$OUT_DIR"
if [ -z "${3:-}" ]; then
  ln -sfn "global_step_${STEP}" "$CKPT_DIR/hf/latest"
fi
echo "merged $ACTOR -> $OUT_DIR"
