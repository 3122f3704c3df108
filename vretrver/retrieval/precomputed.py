"""Candidate lists computed elsewhere: our jsonl format, and the ``hit`` lists of V-Retrver's parquet files.

jsonl, one line per query (what :func:`vretrver.retrieval.search.write_candidates_jsonl` writes)::

    {"qid": "9:1", "ranked": ["9:17", "9:4", ...], "scores": [0.83, 0.81, ...]}

``scores`` is optional (without it, scores are minus the rank: 0, -1, -2, ...). A malformed line raises
:class:`~vretrver.samples.SampleError` naming file, line and field. Given the task, lines for unknown
queries and ids missing from the pool are dropped and counted in :class:`PrecomputedStats`.

V-Retrver parquet (the public evaluation files): one row per query, the query id in a column (``qid`` by
default, or ``extra_info.qid``) and the first-stage list in ``hit``. What we could confirm of a ``hit``
entry from the public release is a record with ``candidate_images`` (an image path) and
``candidate_texts``; entries may also be plain id strings or carry an id field. A hit is resolved to a
pool id by, in order: an id field (``hit_id_key``, else the first of ``did``, ``candidate_id``,
``cand_id``, ``id``); the image path (exact, else the longest unique match of its last 3, 2 or 1 path
components, since the files name paths on the authors' machines); the text (exact, if unique in the pool).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vretrver.samples import Candidate, SampleError, TaskData, iter_jsonl

Ranked = dict[str, list[tuple[str, float]]]
HIT_ID_KEYS = ("did", "candidate_id", "cand_id", "id")


@dataclass
class PrecomputedStats:
    rows: int = 0  # lines / rows read
    queries: int = 0  # queries kept
    unknown_qids: int = 0  # rows whose query is not in the task
    unknown_dids: int = 0  # list entries not in the pool (dropped)
    unresolved_hits: int = 0  # parquet hits that matched no pool candidate (dropped)
    missing_queries: int = 0  # task queries without a row
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


def _fail(where: str, field_name: str, expected: str, got: Any = None) -> SampleError:
    shown = "" if got is None else f", got {json.dumps(got, default=repr)[:80]}"
    return SampleError(f"{where}: field '{field_name}': expected {expected}{shown}")


def read_candidates(
    path: str | os.PathLike, task: TaskData | None = None, top_n: int | None = None, **kw: Any
) -> tuple[Ranked, PrecomputedStats]:
    """Read a candidate file by its suffix: ``.jsonl`` (ours) or ``.parquet`` (V-Retrver's ``hit``)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_candidates_jsonl(path, task, top_n)
    if suffix == ".parquet":
        return read_hit_parquet(path, task, top_n=top_n, **kw)
    raise ValueError(f"{path}: unknown candidate file type {suffix!r}; expected .jsonl or .parquet")


def read_candidates_jsonl(
    path: str | os.PathLike, task: TaskData | None = None, top_n: int | None = None
) -> tuple[Ranked, PrecomputedStats]:
    rows: list[tuple[str, str, list[str], list[float] | None]] = []
    for where, d in iter_jsonl(path):
        qid = d.get("qid")
        if not isinstance(qid, str) or not qid:
            raise _fail(where, "qid", "a non-empty string", qid)
        ranked = d.get("ranked")
        if not isinstance(ranked, list) or not all(isinstance(x, str) and x for x in ranked):
            raise _fail(where, "ranked", "a list of candidate id strings", ranked)
        if len(set(ranked)) != len(ranked):
            dup = next(x for i, x in enumerate(ranked) if x in ranked[:i])
            raise _fail(where, "ranked", f'unique ids ("{dup}" repeats)')
        scores = d.get("scores")
        if scores is not None:
            if not isinstance(scores, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in scores
            ):
                raise _fail(where, "scores", "a list of finite numbers", scores)
            if len(scores) != len(ranked):
                raise _fail(where, "scores", f"as many scores as ranked ids ({len(ranked)})", len(scores))
        rows.append((where, qid, ranked, scores))
    return _collect(rows, task, top_n, str(path))


def _collect(
    rows: Iterable[tuple[str, str, list[str], list[float] | None]],
    task: TaskData | None,
    top_n: int | None,
    path: str,
) -> tuple[Ranked, PrecomputedStats]:
    stats = PrecomputedStats()
    out: Ranked = {}
    first_seen: dict[str, str] = {}
    known_q = {q.id for q in task.queries} if task is not None else None
    for where, qid, ranked, scores in rows:
        stats.rows += 1
        if qid in first_seen:
            raise SampleError(f"{where}: field 'qid': \"{qid}\" already listed at {first_seen[qid]}")
        first_seen[qid] = where
        if known_q is not None and qid not in known_q:
            stats.unknown_qids += 1
            continue
        sc = [float(s) for s in scores] if scores is not None else [-float(r) for r in range(len(ranked))]
        pairs = list(zip(ranked, sc))
        if task is not None:
            kept = [(d, s) for d, s in pairs if d in task.pool]
            stats.unknown_dids += len(pairs) - len(kept)
            pairs = kept
        out[qid] = pairs[:top_n] if top_n is not None else pairs
    stats.queries = len(out)
    if known_q is not None:
        stats.missing_queries = len(known_q - set(out))
    return out, stats


# --------------------------------------------------------------------------- V-Retrver parquet


def read_hit_parquet(
    path: str | os.PathLike,
    task: TaskData | None = None,
    id_column: str = "qid",
    hit_column: str = "hit",
    hit_id_key: str | None = None,
    top_n: int | None = None,
) -> tuple[Ranked, PrecomputedStats]:
    """Read first-stage lists from a V-Retrver evaluation parquet (see the module docstring).

    ``id_column`` may name a top-level column or ``<struct column>.<field>``; when the named column is
    missing, ``extra_info.qid`` is tried. Hits given as records without an id field need ``task`` (its
    pool resolves image paths and texts to ids).
    """
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if hit_column not in names:
        raise SampleError(f"{path}: no column '{hit_column}' (columns: {', '.join(names)})")
    top, _, sub = id_column.partition(".")
    if top not in names:
        if "extra_info" in names and id_column == "qid":
            top, sub = "extra_info", "qid"
        else:
            raise SampleError(f"{path}: no query id column '{id_column}' (columns: {', '.join(names)})")
    resolver = _HitResolver(task.pool if task is not None else None, hit_id_key)

    def rows() -> Iterator[tuple[str, str, list[str], list[float] | None]]:
        n = 0
        for batch in pf.iter_batches(columns=[top, hit_column], batch_size=1024):
            for rec in batch.to_pylist():
                n += 1
                where = f"{path}:row {n}"
                qid = rec.get(top)
                if sub:
                    qid = qid.get(sub) if isinstance(qid, dict) else None
                if isinstance(qid, int) and not isinstance(qid, bool):
                    qid = str(qid)
                if not isinstance(qid, str) or not qid:
                    raise _fail(where, f"{top}.{sub}" if sub else top, "a non-empty query id", qid)
                hits = rec.get(hit_column)
                if not isinstance(hits, list):
                    raise _fail(where, hit_column, "a list of hits", hits)
                ranked: list[str] = []
                scores: list[float] = []
                has_scores = True
                for j, h in enumerate(hits):
                    did, score = resolver.resolve(h, f"{where}", f"{hit_column}[{j}]")
                    if did is None:
                        continue
                    if did in ranked:
                        continue  # the same candidate listed twice: keep its best rank
                    ranked.append(did)
                    if score is None:
                        has_scores = False
                    scores.append(score if score is not None else 0.0)
                yield where, qid, ranked, scores if has_scores and ranked else None

    out, stats = _collect(rows(), task, top_n, str(path))
    stats.unresolved_hits = resolver.unresolved
    return out, stats


class _HitResolver:
    def __init__(self, pool: dict[str, Candidate] | None, id_key: str | None):
        self.pool = pool
        self.id_key = id_key
        self.unresolved = 0
        self._by_path: dict[str, str] = {}
        self._by_suffix: list[dict[str, str | None]] = [{}, {}, {}]  # last 1, 2, 3 components
        self._by_text: dict[str, str | None] = {}
        if pool:
            for did, c in pool.items():
                if c.image:
                    norm = _posix(c.image)
                    self._by_path[norm] = did
                    parts = PurePosixPath(norm).parts
                    for k in (1, 2, 3):
                        key = "/".join(parts[-k:])
                        table = self._by_suffix[k - 1]
                        table[key] = None if key in table and table[key] != did else did
                if c.text:
                    self._by_text[c.text] = None if c.text in self._by_text else did

    def resolve(self, h: Any, where: str, field_name: str) -> tuple[str | None, float | None]:
        if isinstance(h, str):
            return (h, None) if h else (self._miss(), None)
        if not isinstance(h, dict):
            raise _fail(where, field_name, "a candidate id or a record", h)
        score = None
        for key in ("score", "scores", "similarity"):
            v = h.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                score = float(v)
                break
        keys = (self.id_key,) if self.id_key else HIT_ID_KEYS
        for key in keys:
            v = h.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                v = str(v)
            if isinstance(v, str) and v:
                return v, score
        if self.id_key:
            raise _fail(where, f"{field_name}.{self.id_key}", "a candidate id")
        if self.pool is None:
            raise _fail(
                where,
                field_name,
                f"an id field ({', '.join(HIT_ID_KEYS)}); hits without one need the task's pool",
            )
        img = (
            _first_str(h.get("candidate_images"))
            or _first_str(h.get("candidate_image"))
            or _first_str(h.get("img_path"))
        )
        if img:
            norm = _posix(img)
            if norm in self._by_path:
                return self._by_path[norm], score
            parts = PurePosixPath(norm).parts
            for k in (3, 2, 1):
                did = self._by_suffix[k - 1].get("/".join(parts[-k:]))
                if did:
                    return did, score
        txt = (
            _first_str(h.get("candidate_texts"))
            or _first_str(h.get("candidate_text"))
            or _first_str(h.get("txt"))
        )
        if txt:
            did = self._by_text.get(txt) or self._by_text.get(txt.strip())
            if did:
                return did, score
        return self._miss(), None

    def _miss(self) -> None:
        self.unresolved += 1
        return None


def _first_str(v: Any) -> str | None:
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, str) and v.strip() else None


def _posix(p: str) -> str:
    return p.strip().replace("\\", "/")
