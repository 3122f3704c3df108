"""The numbers of one run of the training chain (``local_scripts/run_pipeline.sh``): summary.json / .md.

Per stage: its status (done, skipped and why) and wall time; the well-formed turn rate and tool-call rate
of the model before and after SFT on the same small episode set (greedy evaluation episodes of held-out
queries); the teacher's and RFT's acceptance rates; the RL reward per step and its terms when RL ran; and
the evaluation table of the final checkpoint. With a tiny random model these show that the chain works
and the protocol's format is learned, nothing about retrieval quality; the summary says so.

    python -m vretrver.sft.pipeline summary OUT      write OUT/summary.json and OUT/summary.md
    python -m vretrver.sft.pipeline rates FILE...    well-formed / tool-call rates of trajectory files
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vretrver.jsonl import read_appended
from vretrver.samples import atomic_write_text

STAGES = ("samples", "teacher", "probe_base", "sft", "probe_sft", "rft_data", "rft", "rl", "eval")
MARKERS = ".stages"  # OUT/.stages/<stage>.json: written when a stage finished (or was skipped)
NOTE = (
    "Format-learning evidence on a {model}: these numbers show that every stage runs and hands its output "
    "to the next, and that fine-tuning teaches the protocol's format (well-formed turns, tool calls). They "
    "say nothing about retrieval quality.{synthetic}"
)
SYNTHETIC_NOTE = (
    " The SFT data was written by the rule-based oracle teacher from the ground truth (synthetic, not model "
    "output)."
)


def _records(paths: Iterable[str | os.PathLike]) -> Iterable[dict[str, Any]]:
    """The rows of trajectory / rollout files, or of folders of them; a damaged line (the torn last line of
    an interrupted run) is skipped."""
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        for f in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
            yield from read_appended(f).rows


def turn_rates(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Rates over the episodes of trajectory files (evaluation ``trajectories/*.jsonl`` or synthesis records).

    ``well_formed_turn_rate``: assistant turns that are exactly ``<think>`` then one tool call or answer;
    ``tool_call_turn_rate``: assistant turns that call a tool; ``valid_tool_call_rate``: tool calls the
    tools accepted, over all assistant turns; ``answered_rate``: episodes that ended with an answer;
    ``valid_calls_per_episode``: tool calls the tools accepted, over the episodes.
    """
    episodes = turns = well = calls = valid = answered = 0
    for rec in _records(paths):
        traj = rec.get("trajectory", rec)
        episodes += 1
        answered += traj.get("answer") is not None
        for t in traj.get("turns") or []:
            if t.get("role") == "assistant":
                parsed = t.get("parsed") or {}
                turns += 1
                well += bool(parsed.get("well_formed"))
                calls += parsed.get("kind") == "tool_call"
            elif t.get("role") == "tool":
                valid += bool((t.get("tool") or {}).get("valid"))

    def rate(n: int, d: int) -> float:
        return round(n / d, 4) if d else 0.0

    return {
        "episodes": episodes,
        "assistant_turns": turns,
        "well_formed_turn_rate": rate(well, turns),
        "tool_call_turn_rate": rate(calls, turns),
        "valid_tool_call_rate": rate(valid, turns),
        "answered_rate": rate(answered, episodes),
        "valid_calls_per_episode": rate(valid, episodes),
    }


REWARD_TERMS = ("score", "format", "rank", "tool")  # the EAPO reward and its terms (vretrver.reward)
CALLS = "n_valid_calls"  # valid tool calls a rollout made (the dump holds it beside the reward terms)


def rl_steps(rollouts: str | os.PathLike) -> list[dict[str, float]]:
    """Per RL step, the mean reward, its terms and the valid tool calls over the step's rollouts.

    Read from verl's rollout dump (``trainer.rollout_data_dir``): one ``<step>.jsonl`` per step, one line
    per rollout holding the score and the reward's extra terms."""
    out = []
    folder = Path(rollouts)
    files = sorted(folder.glob("*.jsonl"), key=lambda f: int(f.stem) if f.stem.isdigit() else -1)
    for f in files:
        if not f.stem.isdigit():
            continue
        rows = list(_records([f]))
        row: dict[str, float] = {"step": int(f.stem), "rollouts": len(rows)}
        for key in (*REWARD_TERMS, CALLS):
            values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if values:
                row[key] = round(sum(values) / len(values), 4)
        out.append(row)
    return out


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None when it is missing or damaged (a run folder is read while it grows)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stage_mark(out: Path, stage: str) -> dict[str, Any] | None:
    """What a run script wrote when ``stage`` finished (``OUT/.stages/<stage>.json``), or None."""
    return read_json(out / MARKERS / f"{stage}.json")


def collect(out: str | os.PathLike) -> dict[str, Any]:
    """Everything the summary reports, read from the run folder."""
    out = Path(out)
    stages = {}
    for name in STAGES:
        marker = stage_mark(out, name)
        stages[name] = marker or {"status": "not run"}
    settings = read_json(out / "settings.json") or {}
    summary: dict[str, Any] = {"settings": settings, "stages": stages}
    teacher = read_json(out / "data" / "teacher" / "stats.json")
    if teacher:
        summary["teacher"] = {
            "acceptance_rate": teacher["all"]["acceptance_rate"],
            "kept": teacher["all"]["kept"],
            "sources": teacher.get("sources", {}),
            "synthetic_records": teacher.get("synthetic_records", 0),
        }
    for probe in ("probe_base", "probe_sft"):
        folder = out / probe / "trajectories"
        if folder.is_dir():
            summary[probe] = turn_rates([folder])
    rft = read_json(out / "data" / "rft" / "stats.json")
    if rft:
        summary["rft_data"] = {
            "acceptance_rate": rft["all"]["acceptance_rate"],
            "accepted": rft["all"]["accepted"],
            "tried": rft["all"]["tried"],
            "kept": rft["all"]["kept"],
        }
        summary["rft_sampling"] = turn_rates([out / "data" / "rft" / "trajectories.jsonl"])
    steps = rl_steps(out / "rl" / "rollouts")
    if steps:
        summary["rl"] = {"steps": steps}
    evaluation = read_json(out / "eval" / "summary.json")
    if evaluation is not None:
        md = out / "eval" / "summary.md"
        summary["eval"] = {"summary": evaluation, "table": md.read_text() if md.is_file() else ""}
    synthetic = bool(summary.get("teacher", {}).get("synthetic_records"))
    summary["note"] = NOTE.format(
        model=settings.get("model_kind", "model"), synthetic=SYNTHETIC_NOTE if synthetic else ""
    )
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def to_markdown(s: dict[str, Any]) -> str:
    lines = ["# Training chain", "", f"**{s['note']}**", ""]
    st = s.get("settings") or {}
    if st:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in st.items()), ""]
    lines += ["| stage | status | wall time | output |", "|---|---|---:|---|"]
    for name, m in s["stages"].items():
        status = m.get("status", "?") + (f" ({m['reason']})" if m.get("reason") else "")
        secs = f"{m['seconds']:.0f} s" if isinstance(m.get("seconds"), (int, float)) else "-"
        lines.append(f"| {name} | {status} | {secs} | {m.get('output', '')} |")
    skipped = [n for n, m in s["stages"].items() if m.get("status") == "skipped"]
    lines += ["", f"Stages skipped: {len(skipped)}" + (f" ({', '.join(skipped)})" if skipped else ""), ""]
    if "teacher" in s:
        t = s["teacher"]
        src = ", ".join(f"{k}: {v}" for k, v in t["sources"].items())
        lines.append(
            f"Teacher data: acceptance {_pct(t['acceptance_rate'])}, {t['kept']} kept; sources {src}."
        )
    before, after = s.get("probe_base"), s.get("probe_sft")
    if before or after:
        lines += [
            "",
            "Format before / after SFT (greedy episodes of the same held-out queries):",
            "",
            "| model | episodes | assistant turns | well-formed turns | tool-call turns | valid tool calls | answered |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, r in (("before SFT (base)", before), ("after SFT", after)):
            if r:
                lines.append(
                    f"| {label} | {r['episodes']} | {r['assistant_turns']} | {_pct(r['well_formed_turn_rate'])} "
                    f"| {_pct(r['tool_call_turn_rate'])} | {_pct(r['valid_tool_call_rate'])} "
                    f"| {_pct(r['answered_rate'])} |"
                )
    if "rft_data" in s:
        r = s["rft_data"]
        lines += [
            "",
            f"RFT sampling: acceptance {_pct(r['acceptance_rate'])} ({r['accepted']} / {r['tried']}), "
            f"{r['kept']} kept; well-formed turns {_pct(s['rft_sampling']['well_formed_turn_rate'])}.",
        ]
    if "rl" in s:
        steps = s["rl"]["steps"]
        present = {k for row in steps for k in row if k != "step"}
        # the rollout count, the score and its terms first, then any other number the reward logged
        keys = [k for k in ("rollouts", *REWARD_TERMS) if k in present] + sorted(
            present - {"rollouts", *REWARD_TERMS}
        )
        lines += ["", "RL reward per step:", "", "| step | " + " | ".join(keys) + " |"]
        lines.append("|---:|" + "---:|" * len(keys))
        for row in steps:
            cells = [f"{row[k]:.3f}" if isinstance(row.get(k), float) else str(row.get(k, "-")) for k in keys]
            lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    if "eval" in s:
        lines += ["", "Evaluation of the final checkpoint:", "", s["eval"]["table"].strip()]
    return "\n".join(lines) + "\n"


def write_summary(out: str | os.PathLike) -> dict[str, Any]:
    s = collect(out)
    atomic_write_text(Path(out) / "summary.json", json.dumps(s, indent=2) + "\n")
    atomic_write_text(Path(out) / "summary.md", to_markdown(s))
    return s


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "summary":
        write_summary(args[1])
        print((Path(args[1]) / "summary.md").read_text(), end="")
        return 0
    if len(args) >= 2 and args[0] == "rates":
        print(json.dumps(turn_rates(args[1:]), indent=2))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
