#!/usr/bin/env bash
# Score every checkpoint on every benchmark, then write one summary table.
#   bash Evaluation/eval_bench_all.sh
# Edit the settings below, or set them in the environment (lists as space-separated words), e.g.
#   CHECKPOINTS="V-Retrver/V-Retrver-7B /ckpt/rl_hf" BENCHMARKS="mbeir circo" bash Evaluation/eval_bench_all.sh
# Each (checkpoint, benchmark) pair lands in its own folder
# $OUT_ROOT/<checkpoint name>/<benchmark>/ (summary.json, summary.md, runs/*.trec, trajectories);
# a run that is interrupted resumes when the script is started again.
set -euo pipefail

# ----------------------------------------------------------------- settings
read -ra CHECKPOINTS <<< "${CHECKPOINTS:-V-Retrver/V-Retrver-7B}"   # hub ids or Hugging Face folders
read -ra BENCHMARKS <<< "${BENCHMARKS:-mbeir circo genecis visdial vist mtfiq}"
# Where each benchmark is unpacked (see README: "Benchmark files").
declare -A DATA_ROOT=(
  [mbeir]="${MBEIR_ROOT:-/data/M-BEIR}"
  [heldout]="${MBEIR_ROOT:-/data/M-BEIR}"
  [circo]="${CIRCO_ROOT:-/data/CIRCO}"
  [genecis]="${GENECIS_ROOT:-/data/GeneCIS}"
  [visdial]="${VISDIAL_ROOT:-/data/VisDial}"
  [vist]="${VIST_ROOT:-/data/VIST}"
  [mtfiq]="${MTFIQ_ROOT:-/data/MT-FashionIQ}"
)
# First stage: "lamra" (LamRA-Ret embedder), "offline", or "precomputed:/path/{benchmark}.jsonl".
RETRIEVER="${RETRIEVER:-lamra}"
ENGINE="${ENGINE:-vllm}"                                      # vllm | hf | openai
DEFAULT_ENGINE_ARGS='{"tensor_parallel_size": 1}'
ENGINE_ARGS="${ENGINE_ARGS:-$DEFAULT_ENGINE_ARGS}"            # JSON, passed to the engine
PROFILE="${PROFILE:-}"    # empty: each checkpoint's own (official for the released V-Retrver ones)
MBEIR_POOL="${MBEIR_POOL:-local}"                             # M-BEIR / held-out: local (the papers' tables) | global | lamra-global
OUT_ROOT="${OUT_ROOT:-runs/eval_all}"
read -ra EXTRA_ARGS <<< "${EXTRA_ARGS:-}"                     # e.g. "--limit 100" for a quick look
PYTHON="${PYTHON:-python}"
# ---------------------------------------------------------------------------

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$here/.venv/bin/python" && "$PYTHON" == "python" ]]; then PYTHON="$here/.venv/bin/python"; fi

for ckpt in "${CHECKPOINTS[@]}"; do
  name="$(basename "$ckpt")"
  for bench in "${BENCHMARKS[@]}"; do
    out="$OUT_ROOT/$name/$bench"
    retriever="${RETRIEVER//\{benchmark\}/$bench}"
    echo "=== $name on $bench -> $out"
    args=(eval --benchmark "$bench" --retriever "$retriever" --reranker "$ckpt"
          --engine "$ENGINE" --engine-args "$ENGINE_ARGS" --out "$out")
    if [[ -n "$PROFILE" ]]; then args+=(--profile "$PROFILE"); fi
    if [[ "$bench" != "tuxpaint" ]]; then args+=(--data-root "${DATA_ROOT[$bench]}"); fi
    if [[ "$bench" == "mbeir" || "$bench" == "heldout" ]]; then args+=(--pool "$MBEIR_POOL"); fi
    "$PYTHON" -m vretrver.cli "${args[@]}" "${EXTRA_ARGS[@]}" || echo "!!! $name on $bench failed; continuing"
  done
done

"$PYTHON" -m vretrver.cli summarize "$OUT_ROOT"
