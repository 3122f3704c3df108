"""Result tables in the papers' layout: summary.json, summary.md, summary.csv, and TREC run files.

``summary.json`` keeps metrics as fractions in [0, 1]; the markdown shows percentages, as the papers do.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vretrver.metrics import MBEIR_TASKS, PAPER_RESULTS, paper_metric
from vretrver.samples import atomic_write_text


def task_entry(
    n_queries: int,
    first_stage: Mapping[str, float],
    reranked: Mapping[str, float] | None,
    metric: str,
    counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    delta = None if reranked is None else {k: reranked[k] - first_stage[k] for k in first_stage if k in reranked}
    return {
        "n_queries": n_queries,
        "metric": metric,
        "first_stage": dict(first_stage),
        "reranked": None if reranked is None else dict(reranked),
        "delta": delta,
        "counts": dict(counts or {}),
    }


def summarize(tasks: Mapping[str, dict[str, Any]], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary: per task entries plus the average of each task's paper metric."""

    def avg(kind: str) -> float | None:
        vals = []
        for entry in tasks.values():
            m = entry.get(kind)
            if m is None:
                return None
            vals.append(m[entry["metric"]])
        return sum(vals) / len(vals) if vals else None

    return {
        "tasks": dict(tasks),
        "average": {"first_stage": avg("first_stage"), "reranked": avg("reranked")},
        "config": dict(config or {}),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def summary_markdown(summary: Mapping[str, Any], title: str = "Results") -> str:
    """Per task: queries scored, the paper metric before and after reranking, and the difference."""
    tasks = summary["tasks"]
    lines = [f"## {title}", ""]
    extra = sorted({k for e in tasks.values() for k in e["first_stage"]} - {"R@1", "R@5", "R@10"})
    head = ["task", "queries", "metric", "first stage", "reranked", "Δ", "R@1", "R@5", "R@10", *extra]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for name in _ordered(tasks):
        e = tasks[name]
        m = e["metric"]
        fs, rr = e["first_stage"], e["reranked"]
        shown = rr if rr is not None else fs

        def cell(key: str, shown: Mapping[str, float] = shown) -> str:
            return _pct(shown.get(key))

        row = [
            name,
            str(e["n_queries"]),
            m,
            _pct(fs.get(m)),
            _pct(rr.get(m) if rr else None),
            _signed(rr[m] - fs[m] if rr and m in rr and m in fs else None),
            *[cell(k) for k in ("R@1", "R@5", "R@10", *extra)],
        ]
        lines.append("| " + " | ".join(row) + " |")
    a = summary["average"]
    if len(tasks) > 1:
        d = None if a["reranked"] is None or a["first_stage"] is None else a["reranked"] - a["first_stage"]
        lines.append(
            "| **average** | | | "
            + " | ".join([_pct(a["first_stage"]), _pct(a["reranked"]), _signed(d)])
            + " |"
            + " |" * (3 + len(extra))
        )
    lines.append("")
    lines.append("Columns R@1 / R@5 / R@10 show the reranked list when there is one, else the first stage.")
    notes = [f"{n}: {k} = {v}" for n in _ordered(tasks) for k, v in tasks[n].get("counts", {}).items() if v]
    if notes:
        lines += ["", "Input problems counted (not scored): " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def _ordered(tasks: Mapping[str, Any]) -> list[str]:
    order = {t: i for i, t in enumerate(MBEIR_TASKS)}
    return sorted(tasks, key=lambda t: (order.get(t, len(order)), t))


def mbeir_table2(summary: Mapping[str, Any], row_name: str) -> str:
    """The paper's Table 2 layout (M-BEIR, 16 tasks + average) with the paper's reference rows."""
    head = ["model", *MBEIR_TASKS, "avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for model, vals in PAPER_RESULTS["mbeir"].items():
        cells = [f"{vals[t]:.1f}" if t in vals else "-" for t in MBEIR_TASKS]
        lines.append(f"| {model} (paper) | " + " | ".join(cells) + f" | {vals.get('average', '-')} |")
    tasks = summary["tasks"]
    cells = []
    for t in MBEIR_TASKS:
        e = tasks.get(t)
        m = (e or {}).get("reranked") or (e or {}).get("first_stage")
        cells.append(_pct(m[paper_metric(t)]) if m else "-")
    avg = summary["average"]["reranked"] if summary["average"]["reranked"] is not None else None
    full = all(t in tasks for t in MBEIR_TASKS)
    lines.append(f"| {row_name} | " + " | ".join(cells) + f" | {_pct(avg) if full else '-'} |")
    return "\n".join(lines) + "\n"


def summary_csv(summary: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "n_queries", "stage", "metric", "value"])
    for name in _ordered(summary["tasks"]):
        e = summary["tasks"][name]
        for stage in ("first_stage", "reranked"):
            for metric, value in (e[stage] or {}).items():
                w.writerow([name, e["n_queries"], stage, metric, f"{value:.6f}"])
    return buf.getvalue()


def write_summary(out_dir: str | Path, summary: Mapping[str, Any], title: str = "Results") -> None:
    out = Path(out_dir)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "summary.md", summary_markdown(summary, title))
    atomic_write_text(out / "summary.csv", summary_csv(summary))


def trec_lines(runs: Mapping[str, Sequence[tuple[str, float]]], run_name: str) -> str:
    """TREC run format: ``qid Q0 did rank score run_name`` (rank from 1; ids may not contain spaces)."""
    out = []
    for qid, ranked in runs.items():
        for rank, (did, score) in enumerate(ranked, 1):
            out.append(f"{qid} Q0 {did} {rank} {score:.6f} {run_name}")
    return "\n".join(out) + ("\n" if out else "")


def write_trec(path: str | Path, runs: Mapping[str, Sequence[tuple[str, float]]], run_name: str) -> None:
    for qid, ranked in runs.items():
        for did, _ in ranked:
            if any(ch.isspace() for ch in qid + did):
                raise ValueError(f"TREC ids cannot contain white space: query {qid!r}, candidate {did!r}")
    atomic_write_text(path, trec_lines(runs, run_name))
