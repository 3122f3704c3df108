"""Result tables: summary.json structure, markdown percentages, TREC lines, the M-BEIR 16-task average."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from vretrver.metrics import MBEIR_TASKS, score_task
from vretrver.report.tables import (
    collect_summaries,
    mbeir_table2,
    metric_order,
    summarize,
    summary_csv,
    summary_markdown,
    task_entry,
    trec_lines,
    write_summary,
    write_trec,
)

FASHION = ("fashion200k_task0", "fashion200k_task3", "fashioniq_task7")


def metrics(r1: float, r5: float, r10: float) -> dict[str, float]:
    return {"R@1": r1, "R@5": r5, "R@10": r10}


def mbeir_summary() -> dict:
    """All 16 tasks; task i has R@5 = i/100 and R@10 = 0.5 + i/100 (first stage), reranked + 0.1."""
    entries = {}
    for i, t in enumerate(MBEIR_TASKS):
        fs = metrics(0.0, i / 100, 0.5 + i / 100)
        rr = {k: v + 0.1 for k, v in fs.items()}
        entries[t] = task_entry(100 + i, fs, rr, "R@10" if t in FASHION else "R@5")
    return summarize(entries, {"benchmark": "mbeir"})


def test_summary_json_has_the_documented_structure(tmp_path):
    s = summarize(
        {
            "a": task_entry(3, metrics(1 / 3, 2 / 3, 1.0), metrics(2 / 3, 2 / 3, 1.0), "R@5"),
            "b": task_entry(2, metrics(0.0, 0.5, 0.5), None, "R@1", {"duplicate_qids": 1}),
        }
    )
    write_summary(tmp_path, s, "toy")
    d = json.loads((tmp_path / "summary.json").read_text())
    assert set(d) >= {"tasks", "average"}
    assert set(d["tasks"]) == {"a", "b"}
    a, b = d["tasks"]["a"], d["tasks"]["b"]
    assert a["n_queries"] == 3 and b["n_queries"] == 2
    assert a["first_stage"] == pytest.approx({"R@1": 1 / 3, "R@5": 2 / 3, "R@10": 1.0})
    assert a["reranked"] == pytest.approx({"R@1": 2 / 3, "R@5": 2 / 3, "R@10": 1.0})
    assert b["reranked"] is None
    assert b["counts"] == {"duplicate_qids": 1}
    # Fractions, never percentages.
    for e in d["tasks"].values():
        for stage in ("first_stage", "reranked"):
            for v in (e[stage] or {}).values():
                assert 0.0 <= v <= 1.0
    # Average = plain mean of each task's own paper metric (a: R@5, b: R@1).
    assert d["average"]["first_stage"] == pytest.approx((2 / 3 + 0.0) / 2)
    # b was not reranked: no reranked average, rather than a mean over the tasks that have one.
    assert d["average"]["reranked"] is None


def test_nothing_scorable_is_null_in_json_not_nan(tmp_path):
    empty = score_task({"q": ["x"]}, {"q": []})  # the only query has no positive
    assert math.isnan(empty.metrics["R@5"])
    s = summarize({"t": task_entry(empty.n_scored, empty.metrics, None, "R@5", {"no_positives": 1})})
    write_summary(tmp_path, s)
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text
    d = json.loads(text)
    assert d["tasks"]["t"]["first_stage"]["R@5"] is None
    assert d["tasks"]["t"]["n_queries"] == 0
    assert d["average"]["first_stage"] is None
    md = (tmp_path / "summary.md").read_text()
    assert "| t | 0 | R@5 | - |" in md
    assert "1 queries without any positive (not scored)" in md


def test_markdown_shows_percentages_delta_and_counts():
    s = summarize(
        {
            "tuxpaint_t2i": task_entry(
                50, metrics(0.12, 0.345, 0.5), metrics(0.2, 0.4, 0.5), "R@5", {"empty_queries": 2}
            ),
            "tuxpaint_i2t": task_entry(40, metrics(0.1, 0.25, 0.3), metrics(0.1, 0.2, 0.3), "R@5"),
        }
    )
    md = summary_markdown(s, "Tux Paint")
    lines = md.splitlines()
    assert lines[0] == "## Tux Paint"
    header = next(line for line in lines if line.startswith("| task"))
    assert header.split("|")[1:7] == [" task ", " queries ", " metric ", " first stage ", " reranked ", " Δ "]
    t2i = next(line for line in lines if line.startswith("| tuxpaint_t2i"))
    # 0.345 -> 34.5 (first stage R@5), 0.4 -> 40.0 (reranked), +5.5 points, then reranked R@1/5/10.
    assert [c.strip() for c in t2i.split("|")[1:-1]] == [
        "tuxpaint_t2i",
        "50",
        "R@5",
        "34.5",
        "40.0",
        "+5.5",
        "20.0",
        "40.0",
        "50.0",
    ]
    i2t = next(line for line in lines if line.startswith("| tuxpaint_i2t"))
    assert "| -5.0 |" in i2t
    avg = next(line for line in lines if line.startswith("| **average**"))
    assert [c.strip() for c in avg.split("|")[4:7]] == ["29.8", "30.0", "+0.3"]  # (34.5+25)/2, (40+20)/2
    assert "- tuxpaint_t2i: 2 queries with neither text nor image (dropped)" in md


def test_metric_columns_are_in_numeric_order():
    """R@1, R@2, R@3, R@5, R@10 ..., then mAP@5, mAP@10, mAP@25, mAP@50: by k, not as strings sort."""
    genecis = {"R@1": 0.3, "R@2": 0.5, "R@3": 0.6}
    circo = {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3, "R@25": 0.4, "R@50": 0.5}
    circo.update({"mAP@5": 0.15, "mAP@10": 0.16, "mAP@25": 0.17, "mAP@50": 0.18})
    s = summarize(
        {
            "genecis_change_object": task_entry(10, genecis, None, "R@1"),
            "circo": task_entry(20, circo, None, "mAP@5"),
        }
    )
    md = summary_markdown(s)
    header = next(line for line in md.splitlines() if line.startswith("| task"))
    columns = [c.strip() for c in header.split("|")[7:-1]]
    assert columns == [
        "R@1",
        "R@2",
        "R@3",
        "R@5",
        "R@10",
        "R@25",
        "R@50",
        "mAP@5",
        "mAP@10",
        "mAP@25",
        "mAP@50",
    ]
    row = next(line for line in md.splitlines() if line.startswith("| genecis_change_object"))
    assert [c.strip() for c in row.split("|")[7:-1]] == ["30.0", "50.0", "60.0"] + ["-"] * 8
    row = next(line for line in md.splitlines() if line.startswith("| circo"))
    assert [c.strip() for c in row.split("|")[7:-1]][-4:] == ["15.0", "16.0", "17.0", "18.0"]
    assert metric_order(["mAP@50", "R@10", "mAP@5", "R@2", "n_x"]) == [
        "R@2",
        "R@10",
        "mAP@5",
        "mAP@50",
        "n_x",
    ]
    # the average row still has one cell per column
    avg = next(line for line in md.splitlines() if line.startswith("| **average**"))
    assert avg.count("|") == header.count("|")


def test_mbeir_average_is_the_mean_of_16_paper_metrics_with_fashion_at_r10():
    s = mbeir_summary()
    want_fs = sum((0.5 if t in FASHION else 0.0) + i / 100 for i, t in enumerate(MBEIR_TASKS)) / 16
    assert s["average"]["first_stage"] == pytest.approx(want_fs)
    assert s["average"]["reranked"] == pytest.approx(want_fs + 0.1)
    md = summary_markdown(s, "M-BEIR")
    rows = [line for line in md.splitlines() if line.startswith("| ") and "_task" in line]
    assert [r.split("|")[1].strip() for r in rows] == list(MBEIR_TASKS)  # the published order
    f200 = next(r for r in rows if r.startswith("| fashion200k_task0 "))
    cells = [c.strip() for c in f200.split("|")[1:-1]]
    i = MBEIR_TASKS.index("fashion200k_task0")
    assert cells[2] == "R@10"
    assert cells[3] == f"{100 * (0.5 + i / 100):.1f}"  # first stage R@10, not R@5
    assert cells[4] == f"{100 * (0.6 + i / 100):.1f}"
    coco = [c.strip() for c in next(r for r in rows if r.startswith("| mscoco_task0 ")).split("|")[1:-1]]
    assert coco[2] == "R@5" and coco[3] == "1.0"  # mscoco_task0 is index 1: R@5 = 0.01

    table = mbeir_table2(s, "ours")
    ours = next(line for line in table.splitlines() if line.startswith("| ours"))
    cells = [c.strip() for c in ours.split("|")[1:-1]]
    assert len(cells) == 1 + 16 + 1
    assert cells[1 + i] == f"{100 * (0.6 + i / 100):.1f}"
    assert cells[-1] == f"{100 * (want_fs + 0.1):.1f}"
    assert "| V-Retrver-7B (paper) |" in table and table.count("69.7") == 1


def test_mbeir_table_leaves_the_average_blank_when_tasks_are_missing():
    s = mbeir_summary()
    del s["tasks"]["cirr_task7"]
    ours = next(line for line in mbeir_table2(s, "ours").splitlines() if line.startswith("| ours"))
    cells = [c.strip() for c in ours.split("|")[1:-1]]
    assert cells[1 + MBEIR_TASKS.index("cirr_task7")] == "-"
    assert cells[-1] == "-"


def test_trec_lines_and_file(tmp_path):
    runs = {"9:1": [("9:7", 0.9), ("9:3", 0.5)], "9:2": [("9:3", 1.25)]}
    text = trec_lines(runs, "first_stage")
    assert text.splitlines() == [
        "9:1 Q0 9:7 1 0.900000 first_stage",
        "9:1 Q0 9:3 2 0.500000 first_stage",
        "9:2 Q0 9:3 1 1.250000 first_stage",
    ]
    for line in text.splitlines():
        qid, q0, did, rank, score, name = line.split(" ")
        assert q0 == "Q0" and int(rank) >= 1 and float(score) > 0 and name == "first_stage"
    write_trec(tmp_path / "runs" / "x.trec", runs, "first_stage")
    assert (tmp_path / "runs" / "x.trec").read_text() == text
    with pytest.raises(ValueError, match="white space"):
        write_trec(tmp_path / "bad.trec", {"a b": [("c", 1.0)]}, "r")


def test_csv_has_one_row_per_task_stage_metric():
    s = summarize({"t": task_entry(4, metrics(0.25, 0.5, 0.75), None, "R@5")})
    rows = list(csv.DictReader(io.StringIO(summary_csv(s))))
    assert [(r["stage"], r["metric"], float(r["value"])) for r in rows] == [
        ("first_stage", "R@1", 0.25),
        ("first_stage", "R@5", 0.5),
        ("first_stage", "R@10", 0.75),
    ]


def test_collect_summaries_over_checkpoints_and_benchmarks(tmp_path):
    a = summarize({"t": task_entry(4, metrics(0.25, 0.5, 0.75), metrics(0.5, 0.75, 0.75), "R@5")})
    write_summary(tmp_path / "ckpt-a" / "tuxpaint", a)
    write_summary(tmp_path / "ckpt-b" / "mbeir", mbeir_summary())
    text = collect_summaries(tmp_path)
    assert "| ckpt-a | - | 75.0 (50.0) |" in text
    assert "ckpt-b: M-BEIR (local pools) in the paper's Table 2 layout" in text
    assert collect_summaries(tmp_path / "nothing").startswith("no results under")
