# Shared by the chain scripts (run_pipeline.sh, run_nano.sh), sourced after they set ALL_STAGES, OUT and PY.
# Stage selection: STAGES (default ALL_STAGES) minus SKIP, space- or comma-separated.

wanted() {  # wanted STAGE: 0 when the stage is selected
  local s="$1" list
  list=" $(echo "${STAGES:-$ALL_STAGES}" | tr ',' ' ') "
  [[ "$list" == *" $s "* ]] || return 1
  [[ " $(echo "${SKIP:-}" | tr ',' ' ') " == *" $s "* ]] && return 1
  return 0
}

check_stages() {  # check_stages SCRIPT: exit 2 naming an unknown stage in STAGES or SKIP
  local s
  for s in $(echo "${STAGES:-} ${SKIP:-}" | tr ',' ' '); do
    [[ " $ALL_STAGES " == *" $s "* ]] || { echo "$1: unknown stage '$s' (stages: $ALL_STAGES)" >&2; exit 2; }
  done
}

run() {  # run CMD...: print it, log it to OUT/commands.sh, run it
  local line
  line="$(printf '%q ' "$@")"
  echo "+ $line" >&2
  echo "$line" >> "$OUT/commands.sh"
  "$@"
}

write_settings() {  # write_settings FILE KEY VALUE ...: the run's settings as a JSON object
  "$PY" -c 'import json, sys; json.dump(dict(zip(sys.argv[2::2], sys.argv[3::2])), open(sys.argv[1], "w"), indent=2)' "$@"
}
