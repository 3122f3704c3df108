"""The unit passed between all stages: a query, K candidates, the positives, task metadata.

A benchmark query is a :class:`Sample` with no candidates; the first stage fills them in with its
top-N. Image fields hold file paths (absolute, or relative to the jsonl file that lists them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# SampleError and the jsonl reader / writer live with the other jsonl code; they stay importable from here.
from vretrver.jsonl import SampleError, atomic_write, iter_jsonl, write_jsonl  # noqa: F401


@dataclass
class Candidate:
    id: str
    text: str | None = None
    image: str | None = None

    @property
    def modality(self) -> str:
        return ",".join(m for m, v in (("image", self.image), ("text", self.text)) if v)


@dataclass
class Query:
    text: str | None = None
    images: list[str] = field(default_factory=list)
    # The task instruction shown before the query (M-BEIR's query_instructions.tsv), if any.
    instruction: str | None = None

    @property
    def modality(self) -> str:
        return ",".join(m for m, v in (("image", self.images), ("text", self.text)) if v)


@dataclass
class Sample:
    id: str
    query: Query
    candidates: list[Candidate] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    task: str = ""
    dataset: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def image_paths(self) -> list[str | None]:
        """Tool image indices: 0 is the query image (the last one if several), k is candidate k's image."""
        query_image = self.query.images[-1] if self.query.images else None
        return [query_image] + [c.image for c in self.candidates]

    def positive_numbers(self) -> list[int]:
        """1-based candidate numbers of the positives present among the candidates."""
        pos = set(self.positives)
        return [i for i, c in enumerate(self.candidates, 1) if c.id in pos]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "sample") -> Sample:
        return _parse_sample(d, where)


@dataclass
class TaskData:
    """One benchmark task: its queries (samples without candidates), its candidate pool, its metric."""

    name: str
    queries: list[Sample]
    pool: dict[str, Candidate]
    metric: str = "R@5"  # the number the papers report for this task
    # Counted input problems (duplicate qids, empty queries, positives missing from the pool ...).
    issues: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _expect(cond: bool, where: str, field_name: str, expected: str, got: Any = None) -> None:
    if not cond:
        shown = "" if got is None else f", got {json.dumps(got)[:80] if _jsonable(got) else repr(got)[:80]}"
        raise SampleError(f"{where}: field '{field_name}': expected {expected}{shown}")


def _jsonable(x: Any) -> bool:
    try:
        json.dumps(x)
        return True
    except (TypeError, ValueError):
        return False


def _opt_str(d: dict, key: str, where: str, prefix: str = "") -> str | None:
    v = d.get(key)
    _expect(v is None or isinstance(v, str), where, prefix + key, "a string or null", v)
    return v or None


def _parse_candidate(d: Any, where: str) -> Candidate:
    _expect(isinstance(d, dict), where, "candidates[]", "an object", d)
    cid = d.get("id")
    _expect(isinstance(cid, str) and cid != "", where, "id", "a non-empty string", cid)
    c = Candidate(id=cid, text=_opt_str(d, "text", where), image=_opt_str(d, "image", where))
    _expect(bool(c.text or c.image), where, "text/image", "a candidate with text or an image", d)
    return c


def _parse_sample(d: Any, where: str) -> Sample:
    _expect(isinstance(d, dict), where, "<line>", "a JSON object", d)
    sid = d.get("id")
    _expect(isinstance(sid, str) and sid != "", where, "id", "a non-empty string", sid)
    q = d.get("query")
    _expect(isinstance(q, dict), where, "query", "an object with text / images", q)
    images = q.get("images", [])
    _expect(
        isinstance(images, list) and all(isinstance(p, str) and p for p in images),
        where,
        "query.images",
        "a list of image paths",
        images,
    )
    query = Query(
        text=_opt_str(q, "text", where, "query."),
        images=list(images),
        instruction=_opt_str(q, "instruction", where, "query."),
    )
    cands = d.get("candidates", [])
    _expect(isinstance(cands, list), where, "candidates", "a list", cands)
    candidates = [_parse_candidate(c, f"{where} (candidate {i + 1})") for i, c in enumerate(cands)]
    ids = [c.id for c in candidates]
    _expect(len(set(ids)) == len(ids), where, "candidates", "unique candidate ids", ids)
    pos = d.get("positives", [])
    _expect(
        isinstance(pos, list) and all(isinstance(p, str) for p in pos),
        where,
        "positives",
        "a list of ids",
        pos,
    )
    meta = d.get("meta", {})
    _expect(isinstance(meta, dict), where, "meta", "an object", meta)
    for key in ("task", "dataset"):
        _expect(isinstance(d.get(key, ""), str), where, key, "a string", d.get(key))
    return Sample(
        id=sid,
        query=query,
        candidates=candidates,
        positives=list(pos),
        task=d.get("task", ""),
        dataset=d.get("dataset", ""),
        meta=meta,
    )


# --------------------------------------------------------------------------- jsonl io


def read_samples(path: str | os.PathLike, resolve_images: bool = True) -> list[Sample]:
    return list(iter_samples(path, resolve_images))


def iter_samples(path: str | os.PathLike, resolve_images: bool = True) -> Iterator[Sample]:
    """Read a sample jsonl; relative image paths resolve against the file's folder.

    A bad line raises :class:`SampleError` naming the file, the line number and the field.
    """
    base = Path(path).resolve().parent
    for where, d in iter_jsonl(path):
        s = _parse_sample(d, where)
        if resolve_images:
            s.query.images = [_resolve(base, p) for p in s.query.images]
            for c in s.candidates:
                c.image = _resolve(base, c.image) if c.image else None
        yield s


def _resolve(base: Path, p: str) -> str:
    return p if os.path.isabs(p) else str(base / p)


def write_samples(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write samples as jsonl atomically (temp file + rename)."""
    write_jsonl(path, (s.to_dict() for s in samples))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (a temporary file, then a rename)."""
    atomic_write(path, [text])


def safe_name(*parts: str) -> str:
    """A file-name-safe form of an id, or of several (a task and a query id), unique to its input.

    Characters other than letters, digits and ``-_.`` become ``_``, each part is cut to 80 characters and
    the parts are joined by ``_``. Whenever that could make two inputs look alike (a character replaced, a
    part cut, or more than one part), a short hash of the exact input is appended.
    """
    import hashlib

    clean = ["".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in p)[:80] for p in parts]
    name = "_".join(clean)
    if len(parts) == 1 and clean[0] == parts[0]:
        return name
    # One part hashes as itself: names written before several parts were allowed stay the same.
    key = parts[0] if len(parts) == 1 else json.dumps(list(parts), ensure_ascii=False)
    return name + "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
