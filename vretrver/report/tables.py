"""Result tables in the papers' layout: summary.json, summary.md, summary.csv, and TREC run files.

``summary.json`` keeps metrics as fractions in [0, 1]; the markdown shows percentages, as the papers do.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vretrver.metrics import MBEIR_TASKS, PAPER_RESULTS, paper_metric
from vretrver.samples import atomic_write_text


def _num(x: float | None) -> float | None:
    """A metric for JSON: NaN (nothing could be scored) becomes null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def task_entry(
    n_queries: int,
    first_stage: Mapping[str, float],
    reranked: Mapping[str, float] | None,
    metric: str,
    counts: Mapping[str, int] | None = None,
    engine_failures: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One task of ``summary.json``: queries scored, metrics as fractions (null if nothing was scored).

    ``engine_failures`` (reranked runs): episodes and queries the engine failed on, whose windows kept
    their first-stage order (see ``evaluate.engine_failures``).
    """
    fs = {k: _num(v) for k, v in first_stage.items()}
    rr = None if reranked is None else {k: _num(v) for k, v in reranked.items()}
    delta = None
    if rr is not None:
        delta = {
            k: (rr[k] - fs[k] if rr.get(k) is not None and fs[k] is not None else None) for k in fs if k in rr
        }
    entry = {
        "n_queries": n_queries,
        "metric": metric,
        "first_stage": fs,
        "reranked": rr,
        "delta": delta,
        "counts": {k: int(v) for k, v in (counts or {}).items()},
    }
    if engine_failures is not None:
        entry["engine_failures"] = {k: int(v) for k, v in engine_failures.items()}
    return entry


def summarize(tasks: Mapping[str, dict[str, Any]], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary: per-task entries plus the plain mean over tasks of each task's paper metric.

    An average is null when any task lacks the number (not reranked, or nothing scorable), never a
    mean over the tasks that happen to have one.
    """

    def avg(kind: str) -> float | None:
        vals = []
        for entry in tasks.values():
            m = entry.get(kind)
            v = None if m is None else m.get(entry["metric"])
            if v is None:
                return None
            vals.append(v)
        return sum(vals) / len(vals) if vals else None

    return {
        "tasks": dict(tasks),
        "average": {"first_stage": avg("first_stage"), "reranked": avg("reranked")},
        "config": dict(config or {}),
    }


# What each count in a task's "counts" means (the note under the markdown table).
COUNT_NOTES: dict[str, str] = {
    "duplicate_qids": "repeated query ids (later copies dropped)",
    "empty_queries": "queries with neither text nor image (dropped)",
    "no_positives": "queries without any positive (not scored)",
    "positives_not_in_pool": "positives that are not in the candidate pool",
    "queries_without_positive_in_pool": "queries none of whose positives is in the pool (scored, count 0)",
    "empty_first_stage": "queries with no first-stage candidate (scored, count 0)",
    "missing_image_files": "missing image files (--skip-missing)",
    "unreadable_image_files": "image files that do not open: not an image, or above the size limit (--skip-missing)",
    "missing_image_queries": "queries dropped for a missing or unreadable image",
    "missing_image_candidates": "candidates dropped for a missing or unreadable image",
    "duplicate_dids": "repeated candidate ids in the pool (later copies dropped)",
    "repeated_dids": "extra copies of candidate ids in the pool (each copy takes a rank when scored, as upstream)",
    "no_instruction": "queries without an instruction for their modalities",
    "qrels_unknown_queries": "qrels lines whose query id is not in the query file (ignored)",
    "missing_query_images": "queries whose image file is missing",
    "short_stories": "stories with too few images to form a query (skipped)",
    "stories_missing_images": "stories with a missing image (skipped)",
    "no_parquet_prompt": "queries without a prompt in the parquet (--parquet-prompts: built by the profile)",
    "precomputed_unresolved_hits": "first-stage hits that match no pool candidate (dropped)",
    "precomputed_unknown_dids": "first-stage candidate ids not in the pool (dropped)",
    "precomputed_unknown_qids": "first-stage rows whose query id is not a query of the benchmark",
    "precomputed_missing_queries": "queries without a first-stage row (scored, count 0)",
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def summary_markdown(summary: Mapping[str, Any], title: str = "Results") -> str:
    """Per task: queries scored, the paper metric before and after reranking, and the difference."""
    tasks = summary["tasks"]
    lines = [f"## {title}", ""]
    shown_metrics = metric_order(
        {"R@1", "R@5", "R@10"} | {k for e in tasks.values() for k in e["first_stage"]}
    )
    head = ["task", "queries", "metric", "first stage", "reranked", "Δ", *shown_metrics]
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
            _pct(rr.get(m) if rr else None) + _fell_back(e),
            _signed(_diff(rr.get(m) if rr else None, fs.get(m))),
            *[cell(k) for k in shown_metrics],
        ]
        lines.append("| " + " | ".join(row) + " |")
    a = summary["average"]
    if len(tasks) > 1:
        d = _diff(a["reranked"], a["first_stage"])
        lines.append(
            "| **average** | | | "
            + " | ".join([_pct(a["first_stage"]), _pct(a["reranked"]), _signed(d)])
            + " |"
            + " |" * len(shown_metrics)
        )
    lines.append("")
    lines.append("The metric columns show the reranked list when there is one, else the first stage.")
    notes = [
        f"- {n}: {v} {COUNT_NOTES.get(k, k)}"
        for n in _ordered(tasks)
        for k, v in tasks[n].get("counts", {}).items()
        if v
    ]
    if notes:
        lines += ["", "Input problems (counted; metrics are computed as stated):", *notes]
    failed = [_failure_note(n, tasks[n]["engine_failures"]) for n in _ordered(tasks) if _fell_back(tasks[n])]
    if failed:
        lines += [
            "",
            "Engine failures (a failed window keeps its first-stage order; run the same command again to "
            "retry them):",
            *failed,
        ]
    for n, path in summary.get("submissions", {}).items():
        lines += ["", f"{n}: labels are private; submission file written to {path} (not scored)."]
    return "\n".join(lines) + "\n"


def _fell_back(e: Mapping[str, Any]) -> str:
    """' (3/10 fell back)' after the reranked metric when the engine failed on some queries."""
    f = e.get("engine_failures") or {}
    return f" ({f['failed_queries']}/{f['reranked_queries']} fell back)" if f.get("failed_queries") else ""


def _failure_note(name: str, f: Mapping[str, int]) -> str:
    return (
        f"- {name}: {f['failed_episodes']} of {f['episodes']} episodes failed; {f['failed_queries']} of "
        f"{f['reranked_queries']} reranked queries fell back to the first-stage order "
        f"({f['fallback_queries']} in every window)"
    )


def metric_order(names: Iterable[str]) -> list[str]:
    """Metric names in reading order: every R@k by k, then every mAP@k by k, then anything else."""
    families = ("R", "mAP")

    def key(name: str) -> tuple[int, int, str]:
        family, _, k = name.partition("@")
        if family in families and k.isdigit():
            return families.index(family), int(k), name
        return len(families), 0, name

    return sorted(set(names), key=key)


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
        cells.append(_pct(m.get(paper_metric(t))) if m else "-")
    a = summary["average"]
    avg = a["reranked"] if a["reranked"] is not None else a["first_stage"]
    full = all(t in tasks for t in MBEIR_TASKS) and len(tasks) == len(MBEIR_TASKS)
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
                w.writerow([name, e["n_queries"], stage, metric, "" if value is None else f"{value:.6f}"])
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


def collect_summaries(root: str | Path) -> str:
    """One table over ``root/<checkpoint>/<benchmark>/summary.json`` (the layout of eval_bench_all.sh).

    A cell is the benchmark's average paper metric after reranking (first stage in brackets).
    """
    root = Path(root)
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for f in sorted(root.glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime):
        found.setdefault(f.parent.parent.name, {})[f.parent.name] = json.loads(f.read_text())
    if not found:
        return f"no results under {root}\n"
    benches = sorted({b for runs in found.values() for b in runs})
    lines = [
        "| checkpoint | " + " | ".join(benches) + " |",
        "|---|" + "---:|" * len(benches),
    ]
    for ckpt, runs in found.items():
        cells = []
        for b in benches:
            s = runs.get(b)
            if s is None:
                cells.append("-")
                continue
            a = s["average"]
            cells.append(f"{_pct(a['reranked'])} ({_pct(a['first_stage'])})")
        lines.append(f"| {ckpt} | " + " | ".join(cells) + " |")
    text = (
        "\n".join(lines)
        + "\n\nCells: average paper metric after reranking (first stage in brackets), in %.\n"
    )
    for ckpt, runs in found.items():
        for b, s in runs.items():
            if b.startswith("mbeir"):
                text += (
                    f"\n### {ckpt}: M-BEIR (local pools) in the paper's Table 2 layout\n\n"
                    + mbeir_table2(s, ckpt)
                )
    return text
