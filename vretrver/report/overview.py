"""The report's index page: the summary table, the episode statistics and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vretrver.report.result_folder import QueryView


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _delta(fs: float | None, rr: float | None) -> str:
    return "-" if fs is None or rr is None else f"{100 * (rr - fs):+.1f}"


def summary_table(results: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The summary table of ``summary.json`` (None without one) and the run's settings."""
    summary = results / "summary.json"
    if not summary.is_file():
        return None, {}
    data = json.loads(summary.read_text(encoding="utf-8"))
    cfg = data.get("config", {})
    rows = []
    for name, e in data["tasks"].items():
        m = e["metric"]
        fs, rr = e["first_stage"].get(m), (e.get("reranked") or {}).get(m)
        shown = e.get("reranked") or e["first_stage"]  # R@k of the reranked list when there is one
        rows.append(
            {
                "task": name,
                "n": e["n_queries"],
                "metric": m,
                "first_stage": _pct(fs),
                "reranked": _pct(rr),
                "delta": _delta(fs, rr),
                "recall": [_pct(shown.get(k)) for k in ("R@1", "R@5", "R@10")],
            }
        )
    avg = data.get("average") or {}
    average = None
    if len(data["tasks"]) > 1 and avg.get("first_stage") is not None:
        fs, rr = avg.get("first_stage"), avg.get("reranked")
        average = {"first_stage": _pct(fs), "reranked": _pct(rr), "delta": _delta(fs, rr)}
    table = {
        "rows": rows,
        "average": average,
        "retriever": cfg.get("retriever", "?"),
        "top_n": cfg.get("top_n") or "?",
        "reranker": cfg.get("reranker") or "none (first stage only)",
    }
    return table, cfg


def episode_stats(views: dict[str, list[QueryView]]) -> list[dict[str, Any]]:
    rows = []
    for task, vs in views.items():
        eps = [e for v in vs for e in v.episodes]
        if not eps:
            continue
        n = len(eps)
        answered = sum(bool(e.get("answer") is not None) for e in eps)
        with_tools = sum(bool(e.get("n_valid_calls", 0) + e.get("n_invalid_calls", 0)) for e in eps)
        rows.append(
            {
                "task": task,
                "n": n,
                "answered": f"{100 * answered / n:.0f}%",
                "with_tools": f"{100 * with_tools / n:.0f}%",
                "valid": f"{sum(e.get('n_valid_calls', 0) for e in eps) / n:.2f}",
                "invalid": f"{sum(e.get('n_invalid_calls', 0) for e in eps) / n:.2f}",
                "failed": sum(bool(e.get("failed")) for e in eps),
            }
        )
    return rows


def write_plots(views: dict[str, list[QueryView]], out: Path) -> list[str]:
    from vretrver.report import plots

    all_views = [v for vs in views.values() for v in vs]
    changes = [
        v.best_rank(v.first_stage) - v.best_rank(v.final)
        for v in all_views
        if v.final and v.best_rank(v.first_stage) and v.best_rank(v.final)
    ]
    eps = [e for v in all_views for e in v.episodes]
    if not eps and not changes:
        return []
    plots.rank_change_histogram(changes, out / "rank_change.png")
    plots.tool_calls_histogram(
        [e.get("n_valid_calls", 0) for e in eps],
        [e.get("n_invalid_calls", 0) for e in eps],
        out / "tool_calls.png",
    )
    scored = [v for v in all_views if v.final and v.positives]
    plots.recall_by_tool_calls(
        [v.valid_calls for v in scored],
        [float(v.best_rank(v.final) == 1) for v in scored],
        out / "recall_by_tools.png",
    )
    return ["rank_change.png", "tool_calls.png", "recall_by_tools.png"]
