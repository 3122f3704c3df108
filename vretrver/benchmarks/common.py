"""Small helpers shared by the benchmark readers: required-file checks and line-level errors."""

from __future__ import annotations

import json
import os
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
