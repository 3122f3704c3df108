"""Trajectory records: one JSON line per attempted episode, shared by teacher synthesis, rejection
sampling and the LLaMA-Factory export.

A record holds everything needed to rebuild the exact conversation later: the sample, the profile the
model ran with (and the profile to export with), the tool settings (coordinate convention, resize
bounds), the turn budget, the trajectory (:meth:`vretrver.episode.Episode.to_record`) with the images the
tools returned saved as files, and the filter's verdict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vretrver.jsonl import SampleError, iter_jsonl
from vretrver.samples import Candidate, Query, Sample

RECORD_VERSION = 1

# Literal strings LLaMA-Factory reads as media placeholders (its IMAGE/VIDEO/AUDIO_PLACEHOLDER defaults).
PLACEHOLDERS = ("<image>", "<video>", "<audio>")
_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def escape_placeholders(text: str) -> tuple[str, int]:
    """Rewrite literal ``<image>`` / ``<video>`` / ``<audio>`` as ``[image]`` ... ; return the count.

    A literal placeholder inside query, candidate or model text would be taken for an image slot by
    LLaMA-Factory and break the image count, so training samples are cleaned once, before any model
    sees them, and the exported text stays identical to what the model saw.
    """
    n = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return "[" + m.group(0)[1:-1] + "]"

    return _PLACEHOLDER_RE.sub(sub, text), n


def escape_sample(sample: Sample) -> tuple[Sample, int]:
    """A copy of ``sample`` whose query, instruction and candidate texts carry no literal placeholder."""
    total = 0

    def esc(t: str | None) -> str | None:
        nonlocal total
        if not t:
            return t
        out, n = escape_placeholders(t)
        total += n
        return out

    q = sample.query
    query = Query(text=esc(q.text), images=list(q.images), instruction=esc(q.instruction))
    cands = [Candidate(id=c.id, text=esc(c.text), image=c.image) for c in sample.candidates]
    out = Sample(
        id=sample.id,
        query=query,
        candidates=cands,
        positives=list(sample.positives),
        task=sample.task,
        dataset=sample.dataset,
        meta=dict(sample.meta),
    )
    return out, total


def record_id(sample_id: str, attempt: int) -> str:
    return f"{sample_id}#{attempt}"


def tool_config_from_dict(d: dict[str, Any] | None):
    from vretrver.tools import ToolConfig

    if not d:
        return ToolConfig()
    known = set(ToolConfig.__dataclass_fields__)
    return ToolConfig(**{k: v for k, v in d.items() if k in known})


def tool_config_to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def record_sample(
    record: dict[str, Any], base_dir: str | os.PathLike | None = None, where: str = "record"
) -> Sample:
    """The sample of a record (relative image paths resolve against ``base_dir``)."""
    if not isinstance(record.get("sample"), dict):
        raise SampleError(f"{where}: field 'sample': expected an object")
    s = Sample.from_dict(record["sample"], where=f"{where} (sample)")
    if base_dir is not None:
        base = Path(base_dir)
        s.query.images = [p if os.path.isabs(p) else str(base / p) for p in s.query.images]
        for c in s.candidates:
            if c.image and not os.path.isabs(c.image):
                c.image = str(base / c.image)
    return s


REQUIRED_KEYS = ("id", "sample", "trajectory", "profile", "coordinates", "max_tool_calls")


def check_record(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise SampleError(f"{where}: expected a JSON object (a trajectory record)")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise SampleError(f"{where}: field '{key}': missing (not a trajectory record?)")
    traj = record["trajectory"]
    if not isinstance(traj, dict) or not isinstance(traj.get("turns"), list):
        raise SampleError(f"{where}: field 'trajectory.turns': expected a list of turns")
    return record


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("file:line", record)`` for each line of a records file.

    A torn LAST line (an interrupted append) is skipped; a bad line elsewhere raises SampleError.
    """
    for where, rec in iter_jsonl(path, allow_torn_tail=True):
        yield where, check_record(rec, where)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [r for _, r in iter_records(path)]


def drop_torn_tail(path: str | os.PathLike) -> None:
    """Cut a half-written last line off an append-only jsonl so appends start on a fresh line."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
