"""The rule filter for synthesised and sampled trajectories, and the per-task statistics.

A trajectory is kept when (the paper's rule filter, for SFT and RFT data alike):

* the engine produced every turn (``engine_error`` otherwise);
* every assistant turn is well formed: ``<think>...</think>`` then one ``<tool_call>`` or one
  ``<answer>`` and nothing else (``malformed_turn``);
* every tool call is valid (``invalid_tool_call``);
* it stays within the turn budget and ends with an answer (``over_budget`` / ``no_answer``);
* the answer ranks the positive first (``positive_not_first``).

Optional stricter rules: the answer lists every candidate exactly once (``incomplete_ranking``), and
at least ``min_tool_calls`` valid tool calls (``too_few_tool_calls``).

The verdict is computed from the JSON record of the trajectory, so statistics can be recomputed from a
records file at any time (a resumed run reports the totals of all its sessions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REASONS = (
    "engine_error",
    "malformed_turn",
    "invalid_tool_call",
    "over_budget",
    "no_answer",
    "positive_not_first",
    "incomplete_ranking",
    "too_few_tool_calls",
)


@dataclass
class FilterConfig:
    require_full_ranking: bool = False
    min_tool_calls: int = 0


def judge(
    trajectory: dict[str, Any],
    positives: Iterable[int],
    k: int,
    max_tool_calls: int,
    cfg: FilterConfig | None = None,
) -> list[str]:
    """Why a trajectory (``Episode.to_record()``) is rejected; an empty list means it is kept.

    ``positives`` are the 1-based candidate numbers of the positives, ``k`` the number of candidates.
    """
    cfg = cfg or FilterConfig()
    reasons: list[str] = []
    turns = trajectory.get("turns") or []
    assistant = [t for t in turns if t.get("role") == "assistant"]
    tools = [t for t in turns if t.get("role") == "tool"]
    if trajectory.get("failed"):
        reasons.append("engine_error")
    if not assistant or any(not (t.get("parsed") or {}).get("well_formed") for t in assistant):
        reasons.append("malformed_turn")
    if any(not (t.get("tool") or {}).get("valid") for t in tools):
        reasons.append("invalid_tool_call")
    n_calls = sum(1 for t in assistant if (t.get("parsed") or {}).get("kind") == "tool_call")
    if n_calls > max_tool_calls or (trajectory.get("end_reason") or "").startswith("tool call beyond"):
        reasons.append("over_budget")
    answer = trajectory.get("answer")
    if answer is None:
        reasons.append("no_answer")
    else:
        if not answer or answer[0] not in set(positives):
            reasons.append("positive_not_first")
        if cfg.require_full_ranking and sorted(answer) != list(range(1, k + 1)):
            reasons.append("incomplete_ranking")
    n_valid = sum(1 for t in tools if (t.get("tool") or {}).get("valid"))
    if n_valid < cfg.min_tool_calls:
        reasons.append("too_few_tool_calls")
    return reasons


def assistant_texts(trajectory: dict[str, Any]) -> tuple[str, ...]:
    return tuple(t.get("text", "") for t in trajectory.get("turns") or [] if t.get("role") == "assistant")


def _empty_stats() -> dict[str, Any]:
    return {
        "samples": 0,
        "samples_kept": 0,
        "tried": 0,
        "accepted": 0,
        "kept": 0,
        "tool_calls": 0,
        "rejections": Counter(),
        "first_reasons": Counter(),
    }


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and overall statistics of a set of records.

    ``tried``: trajectories generated; ``accepted``: passed the rule filter; ``kept``: accepted and
    selected for training (not a duplicate, within the per-sample limit); ``acceptance_rate`` =
    accepted / tried; ``rejections``: how many trajectories each reason rejected (a trajectory can
    have several reasons); ``first_reasons``: the first reason of each rejected trajectory (these sum
    to tried - accepted).
    """
    tasks: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, bool]] = {}
    for r in records:
        task = r.get("task") or (r.get("sample") or {}).get("task") or "?"
        st = tasks.setdefault(task, _empty_stats())
        st["tried"] += 1
        reasons = r.get("reasons") or []
        if not reasons:
            st["accepted"] += 1
        else:
            st["first_reasons"][reasons[0]] += 1
            for reason in reasons:
                st["rejections"][reason] += 1
        if r.get("kept"):
            st["kept"] += 1
            st["tool_calls"] += int((r.get("trajectory") or {}).get("n_valid_calls") or 0)
        seen = samples.setdefault(task, {})
        sid = r.get("sample_id") or (r.get("sample") or {}).get("id")
        seen[sid] = seen.get(sid, False) or bool(r.get("kept"))
    for task, st in tasks.items():
        st["samples"] = len(samples[task])
        st["samples_kept"] = sum(samples[task].values())
    total: dict[str, Any] = _empty_stats()
    for st in tasks.values():
        for key, v in st.items():
            total[key] = total[key] + v
    out = {"tasks": {t: _finish(st) for t, st in sorted(tasks.items())}, "all": _finish(total)}
    return out


def _finish(st: dict[str, Any]) -> dict[str, Any]:
    out = dict(st)
    out["acceptance_rate"] = round(st["accepted"] / st["tried"], 4) if st["tried"] else 0.0
    out["mean_tool_calls_kept"] = round(st["tool_calls"] / st["kept"], 3) if st["kept"] else 0.0
    del out["tool_calls"]
    out["rejections"] = {r: st["rejections"][r] for r in REASONS if st["rejections"][r]} | {
        r: n for r, n in st["rejections"].items() if r not in REASONS
    }
    out["first_reasons"] = {r: st["first_reasons"][r] for r in REASONS if st["first_reasons"][r]} | {
        r: n for r, n in st["first_reasons"].items() if r not in REASONS
    }
    return out


def format_stats(stats: dict[str, Any]) -> str:
    """A small plain-text table: task, samples, tried, accepted, kept, rate, top rejection reasons."""
    rows = [("task", "samples", "kept samples", "tried", "accepted", "kept", "rate", "rejections")]
    for name, st in [*stats["tasks"].items(), ("all", stats["all"])]:
        rej = ", ".join(f"{r} {n}" for r, n in sorted(st["rejections"].items(), key=lambda x: -x[1])[:4])
        rows.append(
            (
                name,
                str(st["samples"]),
                str(st["samples_kept"]),
                str(st["tried"]),
                str(st["accepted"]),
                str(st["kept"]),
                f"{st['acceptance_rate']:.3f}",
                rej or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    if stats.get("sources"):
        lines.append("sources: " + ", ".join(f"{s} {n}" for s, n in stats["sources"].items()))
    if stats.get("note"):
        lines.append("note: " + stats["note"])
    return "\n".join(lines)
