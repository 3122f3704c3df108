"""The trained V-Retrver-nano checkpoint for ``vretrver demo --reranker nano[:PATH]``, and the settings
the demo evaluates it with.

``nano`` trains it on first use with ``local_scripts/run_nano.sh`` into ``<cache>/nano-run-v<RUN_VERSION>``
(the script's training stages only: the demo evaluates the checkpoint itself) and reuses it afterwards;
``nano:PATH`` names a checkpoint folder or a run folder of the script.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import vretrver

# Bump when the training recipe changes, so a checkpoint trained by an older one is not reused.
RUN_VERSION = 2  # 2: the teacher answers at the match in a share of its trajectories; RL in fp32
STAGES = ("samples", "teacher", "crops", "sft", "rl")
SCRIPT = Path(vretrver.__file__).resolve().parents[1] / "local_scripts" / "run_nano.sh"
LOG_TAIL = 20  # log lines shown when training fails
NANO_NOTE = (
    "V-Retrver-nano on a synthetic benchmark: these numbers measure a 1.5M-parameter model on generated "
    "images whose deciding mark only a crop shows, not retrieval quality on real data."
)
# run_nano.sh announces each stage on a line of its own: "== sft", "== sft: done before, skipped ...".
_STAGE_LINE = re.compile(r"^== (\w+)(:.*)?$")


class TrainingFailed(RuntimeError):
    """run_nano.sh exited with an error; the message names the log and ends with its last lines."""


def eval_settings() -> dict[str, Any]:
    """How the demo evaluates a nano checkpoint (EvalConfig fields): run_nano.sh's evaluation (its EVAL
    array, K = 5 candidates, a crop of each allowed) on the test split of nano_colour."""
    return {
        "benchmark": "nano",
        "tasks": ["nano_colour"],
        "split": "test",
        "retriever": "hash",
        "top_n": 5,
        "window": 5,
        "reader_args": {"k": 5},
        "max_tool_calls": 5,
    }


def run_folder() -> Path:
    """Where the demo's own training run lives (and its checkpoint is reused from)."""
    from vretrver.testing.tiny_models import default_cache_root

    return default_cache_root() / f"nano-run-v{RUN_VERSION}"


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint ``path`` names: itself when it holds config.json, else, for a run folder of
    run_nano.sh, its RL checkpoint (``rl/hf/latest``) when there is one, else its SFT checkpoint."""
    p = Path(path).expanduser()
    for candidate in (p, p / "rl" / "hf" / "latest", p / "sft"):
        if (candidate / "config.json").is_file():
            return candidate
    what = "is not a folder" if not p.is_dir() else "holds no checkpoint"
    raise ValueError(
        f"--reranker nano:{path}: {p} {what}; give a checkpoint folder (with config.json) or a run folder "
        "of local_scripts/run_nano.sh (with rl/hf/latest/config.json or sft/config.json)"
    )


def is_trained(out: Path) -> bool:
    """The run's final checkpoint exists: sft marked done and rl marked done or skipped."""
    from vretrver.sft.pipeline import stage_mark

    sft, rl = stage_mark(out, "sft"), stage_mark(out, "rl")
    return bool(sft and sft.get("status") == "done" and rl and rl.get("status") in ("done", "skipped"))


def trained_checkpoint(spec: str, progress: bool = True) -> Path:
    """The checkpoint of ``--reranker nano`` (trained on first use, see :func:`train`) or ``nano:PATH``."""
    name, sep, path = spec.partition(":")
    if name != "nano":
        raise ValueError(f"expected 'nano' or 'nano:PATH', got {spec!r}")
    if sep:
        if not path:
            raise ValueError("--reranker nano:PATH needs a path")
        return resolve_checkpoint(path)
    out = run_folder()
    if not is_trained(out):
        train(out, progress)
    return resolve_checkpoint(out)


def train(out: Path, progress: bool = True) -> None:
    """Run run_nano.sh's training stages into ``out``, its output into ``out/train.log``.

    The user's environment (N_TRAIN, SFT_STEPS, ...) passes through; the script resumes at the first
    stage without a mark, so an interrupted run continues on the next call.
    """
    if not SCRIPT.is_file():
        raise FileNotFoundError(
            f"training V-Retrver-nano needs {SCRIPT}, which is missing: it comes with a source checkout "
            "(pip install -e .); or train elsewhere and pass --reranker nano:PATH"
        )
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train.log"
    env = {**os.environ, "OUT": str(out), "STAGES": " ".join(STAGES)}
    env.setdefault("PYTHON", sys.executable)  # the interpreter running the demo, unless told otherwise
    print(
        f"[demo] V-Retrver-nano is not trained yet: training it now on the CPU into {out} (this takes "
        f"a while; log: {log}; Ctrl-C stops it and the next run resumes)",
        file=sys.stderr,
    )
    with open(log, "ab") as f:
        # A session of its own, so that Ctrl-C (and an error here) stops the script's whole process tree.
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=SCRIPT.parents[1],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            tail = _follow(proc, f, progress)
        except BaseException as e:
            _stop(proc)
            if isinstance(e, KeyboardInterrupt):
                print(
                    f"\n[demo] training interrupted; finished stages are kept in {out / '.stages'}: the next "
                    "`vretrver demo --reranker nano` resumes at the first unfinished one",
                    file=sys.stderr,
                )
            raise
    if proc.returncode != 0:
        raise TrainingFailed(
            f"training V-Retrver-nano failed (run_nano.sh exited with {proc.returncode}); the full output "
            f"is in {log}, its last lines:\n" + "".join(tail)
        )


def _follow(proc: subprocess.Popen, log: BinaryIO, progress: bool) -> deque[str]:
    """Copy the script's output to ``log`` while a bar counts its stages; return the last lines."""
    from tqdm import tqdm

    tail: deque[str] = deque(maxlen=LOG_TAIL)
    with tqdm(total=len(STAGES), desc="training V-Retrver-nano", unit="stage", disable=not progress) as bar:
        assert proc.stdout is not None
        for raw in proc.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode("utf-8", errors="replace")
            tail.append(line)
            m = _STAGE_LINE.match(line.strip())
            if m and m.group(1) in STAGES:
                # Starting a stage means those before it are finished; a skipped one is finished too.
                done = STAGES.index(m.group(1)) + (1 if m.group(2) else 0)
                bar.update(done - bar.n)
                bar.set_description(f"training V-Retrver-nano: {m.group(1)}")
        if proc.wait() == 0:
            bar.update(len(STAGES) - bar.n)
    return tail


def _stop(proc: subprocess.Popen) -> None:
    """Stop the script and everything it started (its own session)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
