"""A benchmark is one spec beside its reader: a new one defined here, in the test, runs through the whole
evaluation (CLI choice, its own reader flag, first stage, reranking, metrics, dry run) with no edit
anywhere else; and the README's table of benchmark files is the one the specs produce."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from vretrver.benchmarks import BenchmarkSpec, registry
from vretrver.benchmarks.common import require
from vretrver.cli import main
from vretrver.engines.base import Completion, GenerationConfig
from vretrver.evaluate import EvalConfig, evaluate
from vretrver.metrics import paper_metric
from vretrver.protocol import Conversation
from vretrver.samples import Candidate, Query, Sample, TaskData
from vretrver.tools import ToolConfig

README = Path(__file__).resolve().parents[1] / "README.md"
COLOURS = {"red": (220, 20, 20), "green": (20, 160, 20), "blue": (20, 20, 220), "gold": (230, 200, 0)}


# --------------------------------------------------------------------------- the new benchmark


def load_swatches(
    data_root: str | os.PathLike, split: str = "test", limit: int | None = None, shade: str = "plain"
) -> list[TaskData]:
    """``swatches.json`` ({"colours": [name, ...]}) and ``img/<name>.png``: colour name -> its swatch."""
    root = Path(data_root)
    require([root / "swatches.json", root / "img"], "swatches")
    names = json.loads((root / "swatches.json").read_text())["colours"]
    pool = {n: Candidate(id=n, image=str(root / "img" / f"{n}.png")) for n in names}
    queries = [
        Sample(
            id=f"q-{n}",
            query=Query(text=f"a {shade} {n} swatch", instruction="Find the colour swatch."),
            positives=[n],
            task="swatches",
            dataset="swatches",
            meta={"candidate_modality": "image", "split": split},
        )
        for n in names[:limit]
    ]
    return [TaskData("swatches", queries, pool, metric=SPEC.metric_for("swatches"), meta={"shade": shade})]


SPEC = BenchmarkSpec(
    name="swatches",
    description="colour names -> colour swatches (a test benchmark)",
    reader=load_swatches,
    files=("swatches.json", "img/<colour>.png"),
    paper_metric="R@1",
    top_n=3,
    window=2,
    ks=(1, 2),
    reader_options={"shade": "swatches: the adjective in every query (default: plain)"},
)


@pytest.fixture
def swatches(tmp_path):
    """The spec registered (and removed again) and the benchmark's files with a first-stage list."""
    registry.register(SPEC)
    root = tmp_path / "swatches"
    (root / "img").mkdir(parents=True)
    for n, rgb in COLOURS.items():
        Image.new("RGB", (24, 24), rgb).save(root / "img" / f"{n}.png")
    (root / "swatches.json").write_text(json.dumps({"colours": list(COLOURS)}))
    lists = root / "first_stage.jsonl"
    # red: positive at rank 2; green: rank 1; blue: rank 3; gold: rank 4 (beyond the top-3)
    ranked = {
        "q-red": ["gold", "red", "blue", "green"],
        "q-green": ["green", "red", "blue", "gold"],
        "q-blue": ["red", "green", "blue", "gold"],
        "q-gold": ["red", "green", "blue", "gold"],
    }
    lists.write_text("".join(json.dumps({"qid": q, "ranked": r}) + "\n" for q, r in ranked.items()))
    yield root
    registry.unregister(SPEC.name)


class SwapEngine:
    """Every window answered with [2, 1]: its first two candidates swap."""

    name = "swap"

    def __init__(self) -> None:
        self.tool_config = ToolConfig()

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        return [Completion(text="<think>the second</think><answer>[2, 1]</answer>") for _ in conversations]

    def close(self) -> None:
        pass


def test_a_new_benchmark_runs_through_the_cli(swatches, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--quiet", "--benchmark", "swatches", "--data-root", str(swatches)]
    args += ["--retriever", f"precomputed:{swatches / 'first_stage.jsonl'}", "--shade", "bright"]
    assert main([*args, "--out", str(out)]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["tasks"]["swatches"]
    # The spec's ks and paper metric; the top-3 depth: gold's positive at rank 4 is cut off.
    assert entry["metric"] == "R@1" and entry["n_queries"] == 4
    assert entry["first_stage"] == {"R@1": 0.25, "R@2": 0.5}
    assert summary["average"]["first_stage"] == 0.25
    assert summary["config"]["reader_args"] == {"shade": "bright"}
    assert summary["config"]["window"] == 2
    fs = [json.loads(x) for x in (out / "first_stage" / "swatches.jsonl").read_text().splitlines()]
    assert {len(r["ranked"]) for r in fs} == {3}
    sample = json.loads((out / "samples" / "swatches.jsonl").read_text().splitlines()[0])
    assert "bright" in sample["query"]["text"]
    assert paper_metric("swatches") == "R@1"

    assert main(["eval", "--benchmark", "swatches", "--data-root", str(swatches), "--dry-run"]) == 0
    assert "top-N 3, window 2," in capsys.readouterr().out

    # The reader's own arguments are checked like any other benchmark's.
    assert main([*args, "--reader-args", '{"shades": 1}', "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "load_swatches takes no argument 'shades'; it accepts: shade" in err


def test_a_new_benchmark_is_reranked_with_its_default_window(swatches, tmp_path):
    cfg = EvalConfig(
        benchmark="swatches",
        data_root=str(swatches),
        retriever=f"precomputed:{swatches / 'first_stage.jsonl'}",
        reranker="swap-model",
        stride=1,
    )
    out, summary = evaluate(cfg, tmp_path / "rr", progress=False, engine=SwapEngine())
    trajs = [json.loads(x) for x in (out / "trajectories" / "swatches.jsonl").read_text().splitlines()]
    assert {len(t["candidate_ids"]) for t in trajs} == {2}  # the spec's window, over its top-3
    results = {r["qid"]: r["reranked"] for r in map(json.loads, (out / "results" / "swatches.jsonl").open())}
    # Windows 1-2 then 0-1, each swapped: [a, b, c] -> [a, c, b] -> [c, a, b]
    assert results["q-red"] == ["blue", "gold", "red"]
    # green moves to rank 2, blue to rank 1
    assert summary["tasks"]["swatches"]["reranked"] == {"R@1": 0.25, "R@2": 0.5}


def test_unknown_and_duplicate_benchmarks_are_refused(swatches):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(BenchmarkSpec(**{**SPEC.__dict__, "description": "another"}))
    with pytest.raises(ValueError, match="not arguments of its reader"):
        BenchmarkSpec(**{**SPEC.__dict__, "reader_options": {"hue": "?"}})
    with pytest.raises(ValueError, match="unknown benchmark 'swatch'"):
        registry.get_spec("swatch")


def test_builtin_specs_hold_what_the_rest_of_the_project_reads():
    assert registry.zero_shot() == ("circo", "genecis", "visdial", "vist", "mtfiq")
    assert registry.pool_benchmarks() == ("mbeir", "heldout")
    for name in registry.zero_shot():
        assert registry.get_spec(name).top_n == 10
    assert EvalConfig(benchmark="mbeir").resolved_top_n() == 50
    assert EvalConfig(benchmark="vist").resolved_top_n() == 10
    assert [paper_metric(t) for t in ("fashioniq_task7", "oven_task6", "circo", "genecis_change_object")] == [
        "R@10",
        "R@5",
        "mAP@5",
        "R@1",
    ]


def test_the_readme_table_of_benchmark_files_is_the_specs():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"^\| benchmark \| files read \|\n(?:\|.*\n)+", text, flags=re.M)
    assert found, "the README has no table of benchmark files"
    assert found.group(0).strip() == registry.files_table()
