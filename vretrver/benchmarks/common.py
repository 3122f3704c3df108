"""Small helpers shared by the benchmark readers: required-file checks, line-level errors, JSON shapes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vretrver.samples import SampleError, iter_jsonl  # noqa: F401  (re-exported for the readers)


class MissingDataError(FileNotFoundError):
    """Benchmark files are not where the reader expects them; the message lists every expected path."""


def require(paths: list[Path], benchmark: str, hint: str = "") -> None:
    """Raise :class:`MissingDataError` naming all missing paths (not just the first)."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        listing = "\n".join(f"  {p}" for p in missing)
        raise MissingDataError(f"{benchmark}: missing files:\n{listing}" + (f"\n{hint}" if hint else ""))


def bad(where: str, field_name: str, expected: str, got: Any = None) -> SampleError:
    """A :class:`SampleError` in the project's style: location, field, what was expected, what came."""
    shown = "" if got is None else f", got {_short(got)}"
    return SampleError(f"{where}: field '{field_name}': expected {expected}{shown}")


def _short(x: Any) -> str:
    try:
        return json.dumps(x, ensure_ascii=False)[:80]
    except (TypeError, ValueError):
        return repr(x)[:80]


def get_str(d: dict, key: str, where: str, optional: bool = False) -> str | None:
    """``d[key]`` as a stripped string (None for null/empty when ``optional``), else a SampleError."""
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or (not optional and not v.strip()):
        raise bad(where, key, "a string or null" if optional else "a non-empty string", v)
    return v.strip() or None


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SampleError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def abspath(root: Path, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(root, rel)


def item(d: Any, where: str, keys: Sequence[str]) -> dict:
    """``d`` if it is a JSON object holding every key, else a SampleError naming the first missing."""
    if not isinstance(d, dict):
        raise bad(where, "<item>", "a JSON object", d)
    for k in keys:
        if k not in d:
            raise bad(where, k, "present")
    return d


def as_list(x: Any, path: Path, what: str) -> list:
    """``x`` if it is a JSON list (of ``what``), else a SampleError naming the file."""
    if not isinstance(x, list):
        raise bad(str(path), "<top level>", f"a JSON list of {what}", type(x).__name__)
    return x


# How a candidate id listed twice is scored: "keep" (default) gives every copy its own rank, as the
# upstream evaluation (LamRA's, the paper's source) does by embedding the list as is; "drop" scores each
# id once. See metrics.expand_copies.
DUPLICATES = ("keep", "drop")


def check_duplicates(duplicates: str) -> None:
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")


def copies_of(ids: Sequence[str]) -> dict[str, int]:
    """``{id: n}`` for the ids that occur n > 1 times in ``ids``."""
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return {i: n for i, n in counts.items() if n > 1}
