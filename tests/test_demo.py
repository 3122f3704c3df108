"""The main job (``vretrver demo`` on Tux Paint), single-query reranking (``vretrver rerank`` and
Evaluation/inference_single/inference.py) and the message when the default checkpoint cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT, INSTALL_COMMAND
from vretrver.cli import main
from vretrver.cli_demo import DEFAULT_RERANKER, reranker_unavailable

REPO = Path(__file__).resolve().parents[1]
tuxpaint = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(), reason=f"tuxpaint-stamps-default is not installed; run: {INSTALL_COMMAND}"
)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------ the default checkpoint, unavailable


def test_default_checkpoint_unavailable_offline():
    # conftest sets HF_HUB_OFFLINE=1; the 7B checkpoint is not in any test cache.
    why = reranker_unavailable(DEFAULT_RERANKER, "hf")
    assert why is not None and DEFAULT_RERANKER in why
    assert reranker_unavailable("tiny", "hf") is None


def test_missing_checkpoint_folder_is_named(tmp_path: Path):
    why = reranker_unavailable(str(tmp_path / "no-such-checkpoint"), "hf")
    assert why is not None and "no checkpoint folder" in why and "no-such-checkpoint" in why


def test_big_local_checkpoint_needs_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if _has_cuda():
        pytest.skip("a GPU is visible: the no-GPU branch does not apply")
    import vretrver.cli_demo as cd

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(cd, "CPU_LIMIT_BYTES", 1024)
    why = cd.reranker_unavailable(str(tmp_path), "hf")
    assert why is not None and "needs a GPU" in why
    # Asked to run on the CPU, the user is taken at their word.
    assert cd.reranker_unavailable(str(tmp_path), "hf", {"device": "cpu"}) is None


def test_rerank_refuses_clearly_when_checkpoint_unavailable(sample_photos, capsys: pytest.CaptureFixture):
    rc = main(
        [
            "rerank",
            "--query-text",
            "a cat",
            "--candidates",
            str(sample_photos["chelsea"]),
            "--reranker",
            DEFAULT_RERANKER,
        ]
    )
    out = capsys.readouterr().out
    assert rc == 2
    assert out.startswith("No reranking in this run:")
    assert f"vretrver rerank --reranker {DEFAULT_RERANKER} --engine vllm --query-text 'a cat'" in out


# ------------------------------------------------------------------ one query


def test_rerank_one_query_tiny(
    tiny_qwen25vl: Path, sample_photos, tmp_path: Path, capsys: pytest.CaptureFixture
):
    jsonl = tmp_path / "cands.jsonl"
    jsonl.write_text(
        json.dumps(
            {"id": "rocket", "text": "a rocket on its launch pad", "image": str(sample_photos["rocket"])}
        )
        + "\n"
        + json.dumps({"id": "words", "text": "only a caption, no image"})
        + "\n"
    )
    out_dir = tmp_path / "run"
    rc = main(
        [
            "rerank",
            "--query-text",
            "a cat",
            "--query-image",
            str(sample_photos["astronaut"]),
            "--candidates",
            str(sample_photos["chelsea"]),
            str(sample_photos["coffee"]),
            "--candidates-jsonl",
            str(jsonl),
            "--reranker",
            str(tiny_qwen25vl),
            "--max-new-tokens",
            "24",
            "--out",
            str(out_dir),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "--- window of candidates 1-4" in out and "[assistant]" in out and "(episode ended:" in out
    ranking = out.split("ranking (most relevant first):")[1].split("HTML view")[0]
    assert sorted(line.split()[1] for line in ranking.strip().splitlines()) == sorted(
        ["rocket", "words", "chelsea.png", "coffee.png"]
    )
    page = Path(out.split("HTML view of the episode: ")[1].strip())
    assert page == out_dir / "report" / "single-001.html" and page.is_file()
    html = page.read_text()
    assert "a cat" in html and "only a caption, no image" in html and "turn assistant" in html
    # Run again into the same folder: a fresh single episode, not an appended second one.
    assert main(["rerank", "--query-text", "a cat", "--candidates-jsonl", str(jsonl), "--reranker", str(tiny_qwen25vl),
                 "--max-new-tokens", "8", "--out", str(out_dir)]) == 0  # fmt: skip
    assert len((out_dir / "trajectories" / "single.jsonl").read_text().splitlines()) == 1


def test_rerank_bad_candidates(tmp_path: Path, sample_photos, capsys: pytest.CaptureFixture):
    def error(*args: str) -> str:
        assert main(["rerank", "--reranker", "tiny", *args]) == 2
        return capsys.readouterr().err

    bad = tmp_path / "c.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    assert "c.jsonl:2: field 'text'/'image': expected a candidate" in error(
        "--query-text", "q", "--candidates-jsonl", str(bad)
    )
    bad.write_text('{"id": "a", "image": "nowhere.png"}\n')
    assert "c.jsonl:1: field 'image': file not found" in error(
        "--query-text", "q", "--candidates-jsonl", str(bad)
    )
    bad.write_text('{"id": "a", "text": "x"}\nnot json\n')
    assert "c.jsonl:2: not valid JSON" in error("--query-text", "q", "--candidates-jsonl", str(bad))
    photo = str(sample_photos["coffee"])
    assert "given twice" in error("--query-text", "q", "--candidates", photo, photo)
    with pytest.raises(SystemExit, match="give the query"):
        main(["rerank", "--candidates", photo, "--reranker", "tiny"])


def test_inference_script_is_the_rerank_command():
    script = REPO / "Evaluation" / "inference_single" / "inference.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for opt in (
        "--query-text",
        "--query-image",
        "--candidates",
        "--candidates-dir",
        "--candidates-jsonl",
        "--reranker",
    ):
        assert opt in r.stdout


# ------------------------------------------------------------------ the main job


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Both demo runs share one folder, so the second reuses the first one's embedding cache.
    return tmp_path_factory.mktemp("demo") / "demo"


@pytest.mark.slow
@tuxpaint
def test_demo_default_reranker_unavailable(demo_root: Path, capsys: pytest.CaptureFixture):
    rc = main(["demo", "--limit", "4", "--top-n", "5", "--out", str(demo_root)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "No reranking in this run:" in out and DEFAULT_RERANKER in out
    assert (
        f"vretrver demo --reranker {DEFAULT_RERANKER} --engine vllm --limit 4 --top-n 5 --out {demo_root}"
        in out
    )
    summary = json.loads((demo_root / "summary.json").read_text())
    assert set(summary["tasks"]) == {"tuxpaint_t2i", "tuxpaint_i2t"}
    for entry in summary["tasks"].values():
        assert entry["n_queries"] == 4 and entry["reranked"] is None
        assert 0.0 <= entry["first_stage"]["R@5"] <= 1.0
    assert summary["config"]["reranker"] is None
    index = (demo_root / "report" / "index.html").read_text()
    assert "No reranking in this run" in index and "tuxpaint_t2i" in index
    page = (demo_root / "report" / "tuxpaint_t2i-001.html").read_text()
    assert page.count('class="q"') == 4


@pytest.mark.slow
@tuxpaint
def test_demo_tiny_reranker(demo_root: Path, capsys: pytest.CaptureFixture):
    rc = main(["demo", "--reranker", "tiny", "--limit", "3", "--top-n", "5", "--out", str(demo_root)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tiny randomly initialised model" in out
    results = Path(out.split("results: ")[1].split()[0])
    summary = json.loads((results / "summary.json").read_text())
    assert summary["config"]["reranker"] == "tiny"
    for task, entry in summary["tasks"].items():
        assert entry["n_queries"] == 3 and entry["reranked"] is not None
        rows = [json.loads(x) for x in (results / "results" / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 3
        for r in rows:  # the reranked list is a permutation of the first-stage top-N
            assert sorted(r["reranked"]) == sorted(r["first_stage"]) and len(r["reranked"]) == 5
        assert len((results / "trajectories" / f"{task}.jsonl").read_text().splitlines()) == 3
    index = (results / "report" / "index.html").read_text()
    assert "meaningless" in index and "rank_change.png" in index
