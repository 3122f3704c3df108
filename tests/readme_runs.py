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
import threading
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
    """The README's long runs on two lanes, one thread each (the machine has two cores): the every-stage
    chain (0) on one; the Qwen3-VL chain (1), then the small nano run ("nano"), on the other (the Qwen3-VL
    chain is the shorter). The chains need the RL environment; without it only the nano run starts.
    A lane's next run starts from a thread of the test process when the one before it ends."""

    def __init__(self, make_dir: Callable[[str], Path]) -> None:
        self._make_dir = make_dir  # name -> a fresh folder
        self._runs: dict[int | str, tuple[Path, str, subprocess.Popen]] = {}
        self._errors: dict[int | str, BaseException] = {}
        self._started: dict[int | str, threading.Event] = {}
        self._dirs: dict[int | str, Path] = {}

    def start(self) -> None:
        lanes: list[list[tuple[int | str, str]]] = [[], []]
        if RL_ENV.exists():
            for which, command in enumerate(readme_chain_commands()):
                lanes[which].append((which, command))
        lanes[-1].append(("nano", readme_nano_command()))
        for lane in lanes:
            for which, _ in lane:
                self._started[which] = threading.Event()
                # Folders made here, not in the lanes: pytest's temporary folders are not thread-safe.
                self._dirs[which] = self._make_dir(f"chain{which}")
        for lane in lanes:
            threading.Thread(target=self._run_lane, args=(lane,), daemon=True).start()

    def _run_lane(self, lane: list[tuple[int | str, str]]) -> None:
        for which, command in lane:
            try:
                cwd = self._dirs[which]
                self._runs[which] = (cwd, command, start_readme_run(cwd, command, OMP_NUM_THREADS="1"))
            except BaseException as exc:  # reported by result(), not lost in the thread
                self._errors[which] = exc
            finally:
                self._started[which].set()
            if which in self._runs:
                self._runs[which][2].wait()

    def result(self, which: int | str, timeout: int = 3600) -> tuple[Path, str, int, str]:
        """(run folder's parent, command, exit code, log) of run ``which``, once it has ended."""
        if not self._started[which].wait(timeout=timeout):
            raise TimeoutError(f"the README run {which!r} did not start within {timeout} s")
        if which in self._errors:
            raise RuntimeError(f"the README run {which!r} could not start") from self._errors[which]
        cwd, command, proc = self._runs[which]
        return (cwd, command, *wait_run(proc, cwd, timeout))

    def stop(self) -> None:
        """Kill whatever still runs (an interrupted or failed session)."""
        for _, _, proc in self._runs.values():
            if proc.poll() is None:
                _kill(proc)
