"""What the report reads from a result folder: per task, each query with its rankings and episodes."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vretrver.jsonl import read_appended
from vretrver.samples import Sample, iter_samples


@dataclass
class QueryView:
    task: str
    sample: Sample
    first_stage: list[str]
    final: list[str] | None
    episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def positives(self) -> set[str]:
        return set(self.sample.positives)

    def best_rank(self, ranked: list[str] | None) -> int | None:
        if not ranked:
            return None
        ranks = [i for i, d in enumerate(ranked, 1) if d in self.positives]
        return min(ranks) if ranks else None

    @property
    def failure(self) -> bool:
        """The ground truth is not first in the final ranking (first stage when not reranked)."""
        return bool(self.positives) and self.best_rank(self.final or self.first_stage) != 1

    @property
    def valid_calls(self) -> int:
        return sum(e.get("n_valid_calls", 0) for e in self.episodes)

    @property
    def invalid_calls(self) -> int:
        return sum(e.get("n_invalid_calls", 0) for e in self.episodes)

    @property
    def used_tools(self) -> bool:
        return self.valid_calls + self.invalid_calls > 0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a results / trajectory file; a damaged line is skipped on its own (and named on stderr)."""
    found = read_appended(path)
    for msg in found.damaged:
        print(f"[view] skipped {msg}", file=sys.stderr)
    return found.rows


def load_views(results: Path) -> dict[str, list[QueryView]]:
    """Per task, the queries of a result folder with their rankings and episodes."""
    sample_files = sorted((results / "samples").glob("*.jsonl"))
    if not sample_files:
        raise FileNotFoundError(
            f"{results}: no samples/*.jsonl: not an evaluation, demo or rerank result folder"
        )
    views: dict[str, list[QueryView]] = {}
    for sf in sample_files:
        task = sf.stem
        fs = {r["qid"]: r["ranked"] for r in _read_jsonl(results / "first_stage" / f"{task}.jsonl")}
        final = {r["qid"]: r["reranked"] for r in _read_jsonl(results / "results" / f"{task}.jsonl")}
        eps: dict[str, list[dict[str, Any]]] = {}
        for r in _read_jsonl(results / "trajectories" / f"{task}.jsonl"):
            eps.setdefault(r["qid"], []).append(r)
        views[task] = [
            QueryView(task, s, fs.get(s.id, [c.id for c in s.candidates]), final.get(s.id), eps.get(s.id, []))
            for s in iter_samples(sf, resolve_images=False)
        ]
    return views
