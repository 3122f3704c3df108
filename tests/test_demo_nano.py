"""``vretrver demo --reranker nano[:PATH]``: V-Retrver-nano on its synthetic benchmark, the checkpoint
named by a path or trained on first use by local_scripts/run_nano.sh (vretrver/nano/trained.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from vretrver.cli import main
from vretrver.nano import trained
from vretrver.nano.trained import NANO_NOTE, TrainingFailed, resolve_checkpoint, trained_checkpoint


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache root of this test's own (default_cache_root reads VRETRVER_CACHE)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("VRETRVER_CACHE", str(root))
    return root


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


# ------------------------------------------------------------------ nano:PATH


def test_path_resolves_checkpoint_and_run_folders(tmp_path: Path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert resolve_checkpoint(ckpt) == ckpt
    assert trained_checkpoint(f"nano:{ckpt}") == ckpt
    run = tmp_path / "run"
    sft = _checkpoint(run / "sft")
    assert trained_checkpoint(f"nano:{run}") == sft  # no RL checkpoint: the SFT one
    rl = _checkpoint(run / "rl" / "hf" / "latest")
    assert trained_checkpoint(f"nano:{run}") == rl


@pytest.mark.parametrize("make", [False, True])
def test_bad_path_is_named(tmp_path: Path, make: bool, capsys: pytest.CaptureFixture):
    bad = tmp_path / "nothing-here"
    if make:
        (bad / "sft").mkdir(parents=True)  # a folder, but no checkpoint in it
    with pytest.raises(ValueError, match="nothing-here") as e:
        trained_checkpoint(f"nano:{bad}")
    assert ("holds no checkpoint" if make else "is not a folder") in str(e.value)
    assert main(["demo", "--reranker", f"nano:{bad}", "--out", str(tmp_path / "out")]) == 2
    assert "nothing-here" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nano:PATH"):
        trained_checkpoint("nano:")


# ------------------------------------------------------------------ the demo, end to end on the CPU


def test_demo_nano_end_to_end(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    from vretrver.nano.model import nano_model_path

    model = nano_model_path()  # untrained: its numbers mean nothing, only that the demo runs
    out = tmp_path / "demo"
    assert main(["demo", "--reranker", f"nano:{model}", "--limit", "4", "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert NANO_NOTE in console and "synthetic" in console
    assert f"results: {out}" in console
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["tasks"]["nano_colour"]
    assert entry["n_queries"] == 4 and entry["metric"] == "R@1"
    assert "R@1" in entry["first_stage"] and "R@1" in entry["reranked"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["benchmark"] == "nano" and cfg["reranker"] == str(model) and cfg["profile"] == "nano"
    assert cfg["engine_args"] == {"device": "cpu"} and cfg["max_tool_calls"] == 5
    assert cfg["max_new_tokens"] == 96 and cfg["reader_args"] == {"k": 5}
    assert NANO_NOTE in (out / "summary.md").read_text()
    assert NANO_NOTE in (out / "report" / "index.html").read_text()
    assert (out / "trajectories" / "nano_colour.jsonl").is_file()


# ------------------------------------------------------------------ training on first use


def _fake_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "local_scripts" / "run_nano.sh"
    script.parent.mkdir(parents=True)
    script.write_text("set -e\n" + body)
    monkeypatch.setattr(trained, "SCRIPT", script)


def test_missing_script_is_named(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trained, "SCRIPT", tmp_path / "gone" / "run_nano.sh")
    with pytest.raises(FileNotFoundError, match="gone/run_nano.sh"):
        trained_checkpoint("nano", progress=False)


def test_failed_training_names_the_log(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _fake_script(tmp_path, monkeypatch, 'echo "== samples" >&2\necho "stage says: $STAGES in $OUT"\nexit 3\n')
    with pytest.raises(TrainingFailed) as e:
        trained_checkpoint("nano", progress=False)
    log = trained.run_folder() / "train.log"
    msg = str(e.value)
    assert str(log) in msg and "exited with 3" in msg
    assert f"stage says: samples teacher crops sft rl in {trained.run_folder()}" in msg
    assert "== samples" in log.read_text()


def test_ctrl_c_stops_the_script_and_says_it_resumes(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    pid_file = tmp_path / "pid"
    _fake_script(tmp_path, monkeypatch, f'echo "== sft" >&2\nsleep 60 &\necho $! > {pid_file}\nwait\n')
    # Ctrl-C as the terminal delivers it: SIGINT to the main thread, blocked reading the script's output.
    timer = threading.Timer(3.0, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            trained_checkpoint("nano", progress=False)
    finally:
        timer.cancel()
    assert "resumes at the first unfinished" in capsys.readouterr().err
    child = int(pid_file.read_text())
    for _ in range(50):  # the script's own children are stopped too
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the script's child is still running")


def test_first_use_trains_then_reuses(cache: Path, monkeypatch: pytest.MonkeyPatch):
    """The real run_nano.sh on a tiny setting (16 queries, LLaMA-Factory warm-up and SFT of 5 steps each,
    no RL; about 30 s on 2 busy cores)."""
    for key, value in {
        "N_TRAIN": "16",
        "CROP_STEPS": "5",
        "CROP_BATCH": "2",
        "SFT_STEPS": "5",
        "BATCH": "2",
        "RL_STEPS": "0",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("OUT", "STAGES", "SKIP", "MODEL"):
        monkeypatch.delenv(key, raising=False)
    run = trained.run_folder()
    assert run == cache / f"nano-run-v{trained.RUN_VERSION}"
    ckpt = trained_checkpoint("nano", progress=False)
    assert ckpt == run / "sft" and (ckpt / "config.json").is_file()
    log = (run / "train.log").read_text()
    assert "== sft" in log and "== eval_tools: not selected" in log
    marks = {p.name: p.stat().st_mtime_ns for p in (run / ".stages").iterdir()}
    assert set(marks) == {f"{s}.json" for s in trained.STAGES}
    assert json.loads((run / ".stages" / "rl.json").read_text())["status"] == "skipped"
    log_size = (run / "train.log").stat().st_size

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trained, "train", no_training)
    start = time.monotonic()
    assert trained_checkpoint("nano", progress=False) == ckpt
    assert time.monotonic() - start < 1
    assert {p.name: p.stat().st_mtime_ns for p in (run / ".stages").iterdir()} == marks
    assert (run / "train.log").stat().st_size == log_size
