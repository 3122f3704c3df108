#!/usr/bin/env bash
# Score every checkpoint on every benchmark, then write one summary table.
#   bash Evaluation/eval_bench_all.sh
# Edit the settings below. Each (checkpoint, benchmark) pair lands in its own folder
# $OUT_ROOT/<checkpoint name>/<benchmark>/ (summary.json, summary.md, runs/*.trec, trajectories);
# a run that is interrupted resumes when the script is started again.
set -euo pipefail

# ----------------------------------------------------------------- settings
CHECKPOINTS=(
  "V-Retrver/V-Retrver-7B"
  # "/path/to/your/rl_checkpoint_hf"
)
BENCHMARKS=(mbeir circo genecis visdial vist mtfiq)
# Where each benchmark is unpacked (see README: "Benchmark files").
declare -A DATA_ROOT=(
  [mbeir]="/data/M-BEIR"
  [heldout]="/data/M-BEIR"
  [circo]="/data/CIRCO"
  [genecis]="/data/GeneCIS"
  [visdial]="/data/VisDial"
  [vist]="/data/VIST"
  [mtfiq]="/data/MT-FashionIQ"
)
# First stage: "lamra" (LamRA-Ret embedder), "offline", or "precomputed:/path/{benchmark}.jsonl".
RETRIEVER="lamra"
ENGINE="vllm"                                  # vllm | hf | openai
ENGINE_ARGS='{"tensor_parallel_size": 1}'      # JSON, passed to the engine
PROFILE="v-retrver"
OUT_ROOT="runs/eval_all"
EXTRA_ARGS=()                                  # e.g. (--limit 100) for a quick look
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
          --engine "$ENGINE" --engine-args "$ENGINE_ARGS" --profile "$PROFILE" --out "$out")
    if [[ "$bench" != "tuxpaint" ]]; then args+=(--data-root "${DATA_ROOT[$bench]}"); fi
    "$PYTHON" -m vretrver.cli "${args[@]}" "${EXTRA_ARGS[@]}" || echo "!!! $name on $bench failed; continuing"
  done
done

"$PYTHON" -m vretrver.cli summarize "$OUT_ROOT"
