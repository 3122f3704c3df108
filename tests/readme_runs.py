"""The README's long runs (the training chain for both families, the small V-Retrver-nano run), as the
tests start them: each command line exactly as the README shows it, from a scratch folder.

They take most of the suite's time on a 2-core machine, so ``conftest.py`` starts them in the background
when the first test runs and moves the tests that read them to the end of the session: the rest of the
suite runs beside them instead of before them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RL_ENV = ROOT / ".venv-rl-cpu" / "bin" / "python"

# Settings of the run scripts that come from the command line alone, never from the caller's shell.
_SCRIPT_SETTINGS = {
    "MODEL", "CONFIG", "OUTPUT_DIR", "DATASET", "OUT", "STAGES", "SKIP", "TRAIN_ARGS", "RL_ARGS",
    "RL_PYTHON", "SFT_STEPS", "RFT_K", "RFT_TEMPERATURE", "LR", "GLOBAL_BATCH", "PER_DEVICE_BATCH",
    "FAMILY", "RETRIEVER", "N_SAMPLES", "K", "PROBE_N", "RFT_STEPS", "RL_STEPS", "PYTHON",
    "N_TRAIN", "TEST_N", "CROP_STEPS", "CROP_BATCH", "CROP_MIX", "STOP_SHARE", "BATCH", "WARMUP",
    "THREADS", "TASKS", "PROFILE", "MAX_NEW_TOKENS", "SFT_ARGS",
}  # fmt: skip


def _readme_block_lines(marker: str, script: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(marker, 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if f"local_scripts/{script}" in line]


def readme_chain_commands() -> list[str]:
    """The `run_pipeline.sh` command lines of the README's block of chain commands (the lines a user copies)."""
    return _readme_block_lines(
        "<!-- the chain commands, run by tests/test_pipeline.py -->", "run_pipeline.sh"
    )


def readme_nano_command() -> str:
    """The README's small V-Retrver-nano run (the line under its marker)."""
    [line] = _readme_block_lines("<!-- the nano CI setting, run by tests/test_pipeline.py -->", "run_nano.sh")
    return line


def chain_env(cwd: Path) -> dict[str, str]:
    """The caller's environment less the scripts' own settings; only what says where things are differs
    from a user's shell: the offline model hub, the datasets cache."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRIPT_SETTINGS}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(cwd / "hf_datasets"), WANDB_MODE="disabled")
    return env


def start_readme_run(cwd: Path, command: str, **env: str) -> subprocess.Popen:
    """Start one README command as written, from ``cwd`` (its run folder is then ``cwd/runs/...``);
    output goes to ``cwd/chain.log``."""
    cwd.mkdir(parents=True, exist_ok=True)
    line = command.replace("bash local_scripts/", f"bash {ROOT}/local_scripts/")
    with open(cwd / "chain.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["bash", "-c", line],
            env={**chain_env(cwd), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # one process group: a kill reaches the stages the script started
        )


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_run(proc: subprocess.Popen, cwd: Path, timeout: int = 3600) -> tuple[int, str]:
    """Exit code and log of a run started by :func:`start_readme_run` (killed after ``timeout`` s)."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        code = proc.wait()
    return code, (cwd / "chain.log").read_text(errors="replace")


class LongRuns:
    """The README's long runs, all started at once, one thread each: the every-stage chain (0), the
    Qwen3-VL chain (1) and the small nano run ("nano"). Beside the rest of the suite that is more work than
    the machine's 2 cores, but none of them waits for another, so they end close together instead of one
    lane running alone at the end. The chains need the RL environment; without it only the nano run starts.
    """

    def __init__(self, make_dir: Callable[[str], Path]) -> None:
        self._make_dir = make_dir  # name -> a fresh folder
        self._runs: dict[int | str, tuple[Path, str, subprocess.Popen]] = {}

    def start(self) -> None:
        commands: dict[int | str, str] = {}
        if RL_ENV.exists():
            commands.update(enumerate(readme_chain_commands()))
        commands["nano"] = readme_nano_command()
        for which, command in commands.items():
            cwd = self._make_dir(f"chain{which}")
            self._runs[which] = (cwd, command, start_readme_run(cwd, command, OMP_NUM_THREADS="1"))

    def result(self, which: int | str, timeout: int = 3600) -> tuple[Path, str, int, str]:
        """(run folder's parent, command, exit code, log) of run ``which``, once it has ended."""
        cwd, command, proc = self._runs[which]
        return (cwd, command, *wait_run(proc, cwd, timeout))

    def stop(self) -> None:
        """Kill whatever still runs (an interrupted or failed session)."""
        for _, _, proc in self._runs.values():
            if proc.poll() is None:
                _kill(proc)
