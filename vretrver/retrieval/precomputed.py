"""Candidate lists computed elsewhere: our jsonl format, and the ``hit`` lists of V-Retrver's parquet files.

jsonl, one line per query (what :func:`vretrver.retrieval.search.write_candidates_jsonl` writes)::

    {"qid": "9:1", "ranked": ["9:17", "9:4", ...], "scores": [0.83, 0.81, ...]}

``scores`` is optional (without it, scores are minus the rank: 0, -1, -2, ...). A malformed line raises
:class:`~vretrver.samples.SampleError` naming file, line and field.

V-Retrver parquet (the public evaluation files): one row per query; ``prompt`` (the [system, user]
messages with ``<image>`` placeholders), ``images``, ``extra_info`` (``qid``, ``query_image``,
``query_text``, ``candidate_images``, ``candidate_texts``, ...) and ``hit``, the first-stage list, whose
entries hold ``candidate_images`` (an image path) and ``candidate_texts``. The query id is read from a
column (``qid`` by default, else ``extra_info.qid``); an integer id is LamRA's hashed form
``dataset_id * 500000 + n`` and is read back as ``"dataset_id:n"``.

A hit is resolved to a pool id by an id field, else by its image path or text: see
:mod:`vretrver.retrieval.hit_resolver`.

Given the task, everything that does not become a distinct candidate of a task query is counted in
:class:`PrecomputedStats` with the first few examples: hits that match nothing (or match ambiguously, or
repeat an earlier hit), ids missing from the pool, rows whose query id is unknown, task queries without
a row. :func:`check_losses` turns those counts into an error unless the caller allows them: a shortened
list moves the window boundaries of the reranking, so a silent loss would change results.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vretrver.jsonl import SampleError, iter_jsonl

# MIN_PREFIX_CHARS, lamra_format and unhash_did stay importable from here.
from vretrver.retrieval.hit_resolver import (  # noqa: F401
    MIN_PREFIX_CHARS,
    HitResolver,
    field_error,
    lamra_format,
    short_json,
    unhash_did,
    unhash_qid,
)
from vretrver.samples import Candidate, TaskData

Ranked = dict[str, list[tuple[str, float]]]
EXAMPLES = 5  # examples kept per run, for the error message


@dataclass
class PrecomputedStats:
    rows: int = 0  # lines / rows read
    queries: int = 0  # queries kept
    unknown_qids: int = 0  # rows whose query id is not a query of the benchmark
    other_rows: int = 0  # rows of queries not scored here (other tasks, dropped, past --limit)
    dropped_dids: int = 0  # entries naming candidates the caller dropped from the pool (missing images)
    unknown_dids: int = 0  # list entries naming an id that is not in the pool
    unresolved_hits: int = 0  # parquet hits that did not become a distinct pool candidate
    missing_queries: int = 0  # task queries without a row
    copy_hits: int = 0  # repeats of an id the pool holds several copies of (task.meta["copies"]): not lost
    # How parquet hits were matched: id, image, text, text_lamra, text_prefix (and "+"-joined pairs).
    matched: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}

    @property
    def losses(self) -> int:
        """Entries or queries that were dropped: each one shortens or empties a first-stage list."""
        return self.unresolved_hits + self.unknown_dids + self.unknown_qids + self.missing_queries

    def issues(self) -> dict[str, int]:
        """The counts as they go into a task's ``issues`` (zeros included: the check ran)."""
        return {
            "precomputed_unresolved_hits": self.unresolved_hits,
            "precomputed_unknown_dids": self.unknown_dids,
            "precomputed_unknown_qids": self.unknown_qids,
            "precomputed_missing_queries": self.missing_queries,
        }

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)


class UnresolvedCandidatesError(SampleError):
    """A candidate file names queries or candidates that cannot be matched to the benchmark."""


def check_losses(stats: PrecomputedStats, path: str | os.PathLike, max_unresolved: int = 0) -> None:
    """Raise :class:`UnresolvedCandidatesError` if more than ``max_unresolved`` entries were lost."""
    if stats.losses <= max_unresolved:
        return
    parts = [
        f"{n} {what}"
        for n, what in (
            (stats.unresolved_hits, "hits matching no distinct pool candidate"),
            (stats.unknown_dids, "candidate ids not in the pool"),
            (stats.unknown_qids, "rows with an unknown query id"),
            (stats.missing_queries, "queries without a row"),
        )
        if n
    ]
    raise UnresolvedCandidatesError(
        f"{path}: {stats.losses} first-stage entries cannot be used ({', '.join(parts)}); "
        f"first {len(stats.examples)}: {' | '.join(stats.examples)}. Each loss shortens a list and moves "
        "the reranking windows: check --data-root, --pool and the file, or pass "
        f"--max-unresolved {stats.losses} to score anyway (the counts go into summary.json)"
    )


OtherQuery = Callable[[str], bool]


def read_candidates(
    path: str | os.PathLike,
    task: TaskData | None = None,
    top_n: int | None = None,
    is_other_query: OtherQuery | None = None,
    full_pool: dict[str, Candidate] | None = None,
    **kw: Any,
) -> tuple[Ranked, PrecomputedStats]:
    """Read a candidate file by its suffix: ``.jsonl`` (ours) or ``.parquet`` (V-Retrver's ``hit``).

    ``is_other_query(qid)``: true for ids of queries that exist but are not scored with ``task`` (other
    tasks of a shared file, queries dropped or past a limit); their rows are skipped and counted in
    ``other_rows``. Every other id that is not a query of ``task`` counts as unknown.
    ``full_pool``: the pool before the caller dropped candidates from ``task.pool`` (e.g. for missing
    images); hits are matched against it, and entries it has but ``task.pool`` lacks are only counted
    (``dropped_dids``).
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_candidates_jsonl(path, task, top_n, is_other_query, full_pool)
    if suffix == ".parquet":
        return read_hit_parquet(
            path, task, top_n=top_n, is_other_query=is_other_query, full_pool=full_pool, **kw
        )
    raise ValueError(f"{path}: unknown candidate file type {suffix!r}; expected .jsonl or .parquet")


def read_candidates_jsonl(
    path: str | os.PathLike,
    task: TaskData | None = None,
    top_n: int | None = None,
    is_other_query: OtherQuery | None = None,
    full_pool: dict[str, Candidate] | None = None,
) -> tuple[Ranked, PrecomputedStats]:
    rows: list[tuple[str, str, list[str], list[float] | None]] = []
    for where, d in iter_jsonl(path):
        qid = d.get("qid")
        if not isinstance(qid, str) or not qid:
            raise field_error(where, "qid", "a non-empty string", qid)
        ranked = d.get("ranked")
        if not isinstance(ranked, list) or not all(isinstance(x, str) and x for x in ranked):
            raise field_error(where, "ranked", "a list of candidate id strings", ranked)
        if len(set(ranked)) != len(ranked):
            dup = next(x for i, x in enumerate(ranked) if x in ranked[:i])
            raise field_error(where, "ranked", f'unique ids ("{dup}" repeats)')
        scores = d.get("scores")
        if scores is not None:
            if not isinstance(scores, list) or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in scores
            ):
                raise field_error(where, "scores", "a list of finite numbers", scores)
            if len(scores) != len(ranked):
                raise field_error(
                    where, "scores", f"as many scores as ranked ids ({len(ranked)})", len(scores)
                )
        rows.append((where, qid, ranked, scores))
    return _collect(rows, task, top_n, is_other_query, full_pool)


def _collect(
    rows: Iterable[tuple[str, str, list[str], list[float] | None]],
    task: TaskData | None,
    top_n: int | None,
    is_other_query: OtherQuery | None,
    full_pool: dict[str, Candidate] | None,
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
            _outside(stats, task, qid, where, qid, is_other_query)
            continue
        sc = [float(s) for s in scores] if scores is not None else [-float(r) for r in range(len(ranked))]
        pairs = list(zip(ranked, sc))
        if task is not None:
            kept = []
            for j, (d, s) in enumerate(pairs):
                if d in task.pool:
                    kept.append((d, s))
                elif full_pool is not None and d in full_pool:
                    stats.dropped_dids += 1
                else:
                    stats.unknown_dids += 1
                    stats.note(f"{where} (query {qid}) ranked[{j}]: {d!r} is not in the pool")
            pairs = kept
        out[qid] = pairs[:top_n] if top_n is not None else pairs
    _finish(stats, out, task)
    return out, stats


def _outside(
    stats: PrecomputedStats,
    task: TaskData | None,
    qid: str,
    where: str,
    raw: Any,
    is_other_query: OtherQuery | None,
) -> None:
    if is_other_query is not None and is_other_query(qid):
        stats.other_rows += 1
        return
    stats.unknown_qids += 1
    shown = repr(qid) if raw == qid else f"{raw!r} (read as {qid!r})"
    stats.note(f"{where}: query id {shown} is not a query of {task.name if task else 'the task'}")


def _finish(stats: PrecomputedStats, out: Ranked, task: TaskData | None) -> None:
    stats.queries = len(out)
    if task is None:
        return
    for q in task.queries:
        if q.id not in out:
            stats.missing_queries += 1
            stats.note(f"query {q.id} of {task.name} has no row")


# --------------------------------------------------------------------------- V-Retrver parquet


def _query_id(raw: Any, known: set[str] | None, where: str, column: str) -> str:
    """A row's query id; integers (and all-digit strings) are LamRA-hashed ids unless the task has them."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw:
        raise field_error(where, column, "a non-empty query id", raw)
    if raw.isascii() and raw.isdigit() and (known is None or raw not in known):
        return unhash_qid(int(raw))
    return raw


def _id_column(names: list[str], id_column: str, path: Any) -> tuple[str, str]:
    top, _, sub = id_column.partition(".")
    if top not in names:
        if "extra_info" in names and id_column == "qid":
            return "extra_info", "qid"
        raise SampleError(f"{path}: no query id column '{id_column}' (columns: {', '.join(names)})")
    return top, sub


def _parquet_rows(
    path: str | os.PathLike, id_column: str, column: str
) -> Iterator[tuple[str, Any, Any, str]]:
    """``(where, raw query id, value of column, id column name)`` for each row of the file."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise SampleError(f"{path}: no column '{column}' (columns: {', '.join(names)})")
    top, sub = _id_column(names, id_column, path)
    shown = f"{top}.{sub}" if sub else top
    n = 0
    for batch in pf.iter_batches(columns=list(dict.fromkeys([top, column])), batch_size=256):
        for rec in batch.to_pylist():
            n += 1
            raw = rec.get(top)
            if sub:
                raw = raw.get(sub) if isinstance(raw, dict) else None
            yield f"{path}:row {n}", raw, rec.get(column), shown


def read_hit_parquet(
    path: str | os.PathLike,
    task: TaskData | None = None,
    id_column: str = "qid",
    hit_column: str = "hit",
    hit_id_key: str | None = None,
    top_n: int | None = None,
    is_other_query: OtherQuery | None = None,
    full_pool: dict[str, Candidate] | None = None,
) -> tuple[Ranked, PrecomputedStats]:
    """Read first-stage lists from a V-Retrver evaluation parquet (see the module docstring).

    ``id_column`` may name a top-level column or ``<struct column>.<field>``; when the named column is
    missing, ``extra_info.qid`` is tried. Hits given as records without an id field need ``task`` (its
    pool resolves image paths and texts to ids).
    """
    known_q = {q.id for q in task.queries} if task is not None else None
    pool = full_pool if full_pool is not None else task.pool if task is not None else None
    resolver = HitResolver(pool, hit_id_key, task.meta.get("copies") if task else None)
    stats = PrecomputedStats()
    out: Ranked = {}
    first_seen: dict[str, str] = {}
    for where, raw, hits, id_name in _parquet_rows(path, id_column, hit_column):
        qid = _query_id(raw, known_q, where, id_name)
        stats.rows += 1
        if qid in first_seen:
            raise SampleError(f"{where}: field '{id_name}': \"{qid}\" already listed at {first_seen[qid]}")
        first_seen[qid] = where
        if known_q is not None and qid not in known_q:
            _outside(stats, task, qid, where, raw, is_other_query)
            continue
        if not isinstance(hits, list):
            raise field_error(where, hit_column, "a list of hits", hits)
        pairs = resolver.row(hits, f"{where} (query {qid})", hit_column, stats)
        if task is not None and pool is not task.pool:
            kept = [(d, s) for d, s in pairs if d in task.pool]
            stats.dropped_dids += len(pairs) - len(kept)
            pairs = kept
        out[qid] = pairs[:top_n] if top_n is not None else pairs
    _finish(stats, out, task)
    return out, stats


Prompt = list[dict[str, str]]


def read_parquet_prompts(
    path: str | os.PathLike,
    task: TaskData | None = None,
    id_column: str = "qid",
    prompt_column: str = "prompt",
) -> dict[str, Prompt]:
    """Each query's ``prompt`` as ``[{"role": "system", "content": ...}, {"role": "user", "content": ...}]``.

    The contents are kept exactly (``<image>`` placeholders included). Rows of queries outside ``task``
    are skipped; query ids are read as :func:`read_hit_parquet` reads them.
    """
    known_q = {q.id for q in task.queries} if task is not None else None
    out: dict[str, Prompt] = {}
    for where, raw, prompt, id_name in _parquet_rows(path, id_column, prompt_column):
        qid = _query_id(raw, known_q, where, id_name)
        if known_q is not None and qid not in known_q:
            continue
        ok = (
            isinstance(prompt, list)
            and len(prompt) == 2
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)
            and [m.get("role") for m in prompt] == ["system", "user"]
        )
        if not ok:
            raise field_error(
                where, prompt_column, "[system, user] messages with string contents", short_json(prompt, 80)
            )
        out[qid] = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return out
