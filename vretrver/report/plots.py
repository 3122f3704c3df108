"""Report plots (matplotlib, PNG): rank changes, tool calls per episode, recall by tool calls."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def rank_change_histogram(changes: Sequence[int], path: Path) -> Path:
    """Positions gained (+) or lost (-) by the best positive, first stage -> reranked."""
    plt, fig, ax = _figure()
    counts = Counter(changes)
    if counts:
        lo, hi = min(min(counts), 0), max(max(counts), 0)
        xs = list(range(lo, hi + 1))
        colors = ["#2a9d4b" if x > 0 else "#b04040" if x < 0 else "#888888" for x in xs]
        ax.bar(xs, [counts[x] for x in xs], width=0.8, color=colors)
        ax.set_xticks(xs if len(xs) <= 21 else xs[:: max(1, len(xs) // 10)])
        ax.set_xlim(min(lo, -3) - 0.6, max(hi, 3) + 0.6)  # a single bar stays a bar, not a block
    ax.set_xlabel("rank change of the ground truth (positions gained)")
    ax.set_ylabel("queries")
    ax.set_title("First stage → reranked")
    return _save(plt, fig, path)


def tool_calls_histogram(valid: Sequence[int], invalid: Sequence[int], path: Path) -> Path:
    plt, fig, ax = _figure()
    cv, ci = Counter(valid), Counter(invalid)
    xs = sorted(set(cv) | set(ci) | {0, 1, 2})  # 0-2: the paper's budget of two calls
    ax.bar([x - 0.2 for x in xs], [cv[x] for x in xs], width=0.4, label="valid calls", color="#4a7ebb")
    ax.bar([x + 0.2 for x in xs], [ci[x] for x in xs], width=0.4, label="invalid calls", color="#d9774b")
    ax.set_xticks(xs)
    ax.set_xlabel("tool calls of that kind in the episode")
    ax.set_ylabel("episodes")
    ax.set_title("Tool calls per episode")
    ax.legend()
    return _save(plt, fig, path)


def recall_by_tool_calls(
    calls: Sequence[int], hits: Sequence[float], path: Path, metric: str = "R@1"
) -> Path:
    """Mean hit (e.g. R@1) of queries grouped by their number of valid tool calls."""
    groups: dict[int, list[float]] = defaultdict(list)
    for c, h in zip(calls, hits, strict=True):
        groups[c].append(h)
    xs = sorted(groups)
    plt, fig, ax = _figure()
    means = [sum(groups[x]) / len(groups[x]) for x in xs]
    ax.bar(xs, means, width=0.6, color="#5a9e6f")
    for x, m in zip(xs, means):
        ax.annotate(f"n={len(groups[x])}", (x, m + 0.02), ha="center", fontsize=8, color="#333")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(min(xs, default=0) - 0.6, max(max(xs, default=0), 2) + 0.6)
    ax.yaxis.set_major_locator(plt.MultipleLocator(0.2))
    ax.set_xticks(xs)
    ax.set_xlabel("valid tool calls (all windows of the query)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by number of tool calls")
    return _save(plt, fig, path)
