"""``vretrver eval --dry-run``: counts from the benchmark and the first-stage lists, no model, no files."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_evaluate import candidates_file, mbeir, mbeir_args, run_cli  # noqa: F401


def restated_windows(n: int, window: int, stride: int) -> int:
    """Windows over a list of n, back to front: starts n - window, then every stride down, and 0."""
    if n <= window:
        return 1
    starts = list(range(n - window, -1, -stride))
    return len(starts) + (starts[-1] != 0)


def table(stdout: str) -> dict[str, list[str]]:
    """Rows of the printed table by task (a task marked ``*`` under its plain name)."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.replace(" * ", " ").split()
        if len(parts) >= 6 and parts[1].replace(",", "").isdigit():
            rows[parts[0]] = [x.replace(",", "") for x in parts[1:]]
    return rows


def test_precomputed_lists_are_counted_query_by_query(mbeir, tmp_path, capsys):  # noqa: F811
    src = candidates_file(tmp_path / "cands.jsonl")
    args = mbeir_args(mbeir, f"precomputed:{src}", "mscoco_task0,mscoco_task3", "--reranker", "/no/such/model",
                      "--top-n", "10", "--window", "4", "--stride", "2", "--dry-run", "--rate", "0.5")  # fmt: skip
    code, out, _ = run_cli(args, capsys)
    assert code == 0, out
    rows = table(out)
    # mscoco_task0 scores 9:1, 9:2, 9:3, 9:5, 9:6 (a duplicate and an empty query dropped); their lists
    # keep 9, 8, 10, 9, 9 image candidates (the text candidate is outside the task's modality).
    lens = [9, 8, 10, 9, 9]
    windows = sum(restated_windows(n, 4, 2) for n in lens)
    assert windows == 19
    # queries, windows, calls (2 tool calls + an answer each), images (text queries: the candidates')
    assert rows["mscoco_task0"][:4] == ["5", "19", "57", str(sum(lens))]
    assert rows["mscoco_task0"][4:] == ["38", "s"]  # 19 windows at 0.5 episodes/s
    # mscoco_task3: 3 image queries over 2 text candidates: one window and one image each.
    assert rows["mscoco_task3"][:4] == ["3", "3", "9", "3"]
    assert rows["total"][:4] == ["8", "22", "66", str(sum(lens) + 3)]
    assert "assumed" not in out and "0.5 episodes/s (--rate)" in out


def test_without_lists_full_top_n_is_assumed_and_said(mbeir, tmp_path, capsys):  # noqa: F811
    args = mbeir_args(mbeir, "hash", "mscoco_task0", "--reranker", "m", "--top-n", "10", "--window", "4",
                      "--stride", "2", "--window-mode", "official", "--max-tool-calls", "1", "--dry-run")  # fmt: skip
    code, out, _ = run_cli(args, capsys)
    assert code == 0, out
    rows = table(out)
    # The pool has 13 candidates (12 images): every query assumed to get 10, 12/13 of them with an image.
    # Official windows for top 10, window 4, stride 2: starts 6, 4, 2, 0, all inside a list of 10.
    assert rows["mscoco_task0"][:4] == ["5", "20", "40", f"{5 * 10 * 12 / 13:.0f}"]
    assert "mscoco_task0 *" in out and "full top-N lists assumed" in out
    assert "assumed 2 episodes/s" in out
    assert not (tmp_path / "out").exists()


def test_dry_run_loads_no_model_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import vretrver.evaluation.reranker as reranker

    monkeypatch.chdir(tmp_path)
    # where the evaluation builds its engines: a dry run must never get there
    monkeypatch.setattr(reranker, "make_reranker_engine", lambda *a, **k: pytest.fail("an engine was built"))
    code, out, _ = run_cli(
        ["--benchmark", "tuxpaint", "--retriever", "hash", "--reranker", "tiny", "--dry-run"], capsys
    )
    assert code == 0 and "tuxpaint_t2i" in out and "total" in out
    assert list(Path(tmp_path).iterdir()) == []


def test_out_is_still_required_for_a_real_run(capsys):
    code, _, err = run_cli(["--benchmark", "tuxpaint", "--retriever", "hash"], capsys)
    assert code == 2 and "--out is required" in err
