"""JSON-lines files, read and written in one place: exact places for bad input, lines that always encode.

Two ways to read. :func:`iter_jsonl` is strict: input files (samples, candidate lists, records) must be
whole, and a bad line raises :class:`SampleError` naming the file and line. :func:`read_appended` is
lenient, for files we append to (results, trajectories, rollout dumps): a damaged line is dropped and
reported on its own, never together with the good lines after it. Both work on bytes, so a byte that is
not UTF-8 is reported with its line and file offset instead of a decoder traceback.

Writing: Python strings may hold lone surrogates (a model or server can produce the JSON escape
``\\ud800``), which UTF-8 cannot encode. Such characters are written as the text of their escape
(``\\ud800``, six characters) and the row lists where in ``replaced_unencodable``. :func:`write_jsonl`
replaces a file whole and atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPLACED_FIELD = "replaced_unencodable"
_BOM = b"\xef\xbb\xbf"


class SampleError(ValueError):
    """A sample (or a line of a sample file) does not have the expected shape."""


@dataclass
class RawLine:
    number: int  # 1-based
    offset: int  # byte offset of the line's first byte in the file
    data: bytes
    complete: bool  # ends with a newline (a last line without one may be a torn append)

    def where(self, path: str | os.PathLike) -> str:
        return f"{path}:{self.number}"


def raw_lines(path: str | os.PathLike) -> Iterator[RawLine]:
    """The lines of a file as bytes, with their numbers and offsets (a leading UTF-8 BOM is skipped)."""
    offset = 0
    with open(path, "rb") as f:
        for n, data in enumerate(f, 1):
            start = offset
            offset += len(data)
            if n == 1 and data.startswith(_BOM):
                data, start = data[len(_BOM) :], start + len(_BOM)
            yield RawLine(n, start, data, data.endswith(b"\n"))


def parse_line(line: RawLine, path: str | os.PathLike) -> Any:
    """The JSON value of one line; :class:`SampleError` naming the line (and byte) if it is not one."""
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError(
            f"{line.where(path)}: not UTF-8: byte 0x{line.data[e.start]:02x} at byte offset "
            f"{line.offset + e.start} of the file (byte {e.start + 1} of the line); save the file as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SampleError(f"{line.where(path)}: not valid JSON ({e.msg} at column {e.colno})") from None


def parse_object(line: RawLine, path: str | os.PathLike) -> dict[str, Any]:
    obj = parse_line(line, path)
    if not isinstance(obj, dict):
        shown = json.dumps(obj)[:80]
        raise SampleError(f"{line.where(path)}: field '<line>': expected a JSON object, got {shown}")
    return obj


def iter_jsonl(
    path: str | os.PathLike, allow_torn_tail: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("file:line", object)`` for each non-blank line of a jsonl file.

    A line that is not UTF-8 (named with its byte offset), not valid JSON or not an object raises
    :class:`SampleError` naming the line. ``allow_torn_tail`` skips a half-written last line (an
    interrupted append: no final newline).
    """
    for line in raw_lines(path):
        if not line.data.strip():
            continue
        try:
            obj = parse_object(line, path)
        except SampleError:
            if allow_torn_tail and not line.complete:
                return
            raise
        yield line.where(path), obj


@dataclass
class AppendedFile:
    """What :func:`read_appended` found: the good rows and what it left out."""

    rows: list[dict[str, Any]]
    damaged: list[str]  # one message per dropped line (file:line: reason)
    torn_tail: bool  # the last line had no newline and did not parse: an interrupted append

    @property
    def intact(self) -> bool:
        return not self.damaged and not self.torn_tail


def read_appended(path: str | os.PathLike) -> AppendedFile:
    """Rows of a jsonl file written by appending; each bad line is dropped on its own and reported.

    A missing file is empty. A half-written last line is expected after an interruption: it is
    dropped as ``torn_tail`` rather than reported as damage.
    """
    found = AppendedFile([], [], False)
    if not os.path.isfile(path):
        return found
    for line in raw_lines(path):
        if not line.data.strip():
            continue
        try:
            found.rows.append(parse_object(line, path))
        except SampleError as e:
            if line.complete:
                found.damaged.append(str(e))
            else:
                found.torn_tail = True
    return found


# --------------------------------------------------------------------------- writing


def _escaped(s: str) -> str:
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def writable(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every string UTF-8 can encode; the paths (``turns[1].text``) of those changed."""
    changed: list[str] = []

    def walk(x: Any, where: str) -> Any:
        if isinstance(x, str):
            if _encodable(x):
                return x
            changed.append(where or "<value>")
            return _escaped(x)
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                key = k
                if isinstance(k, str) and not _encodable(k):
                    key = _escaped(k)
                    changed.append(f"{where}.{key}<key>" if where else f"{key}<key>")
                out[key] = walk(v, f"{where}.{key}" if where else str(key))
            return out
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x

    return walk(obj, ""), changed


def dumps_line(row: dict[str, Any]) -> str:
    """One JSON line (no newline) that always encodes to UTF-8; see the module notes on surrogates."""
    text = json.dumps(row, ensure_ascii=False)
    if _encodable(text):
        return text
    fixed, changed = writable(row)
    fixed[REPLACED_FIELD] = [*row.get(REPLACED_FIELD, []), *changed]
    return json.dumps(fixed, ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as jsonl atomically; text UTF-8 cannot encode is escaped (see the module notes)."""
    atomic_write(path, (dumps_line(row) + "\n" for row in rows))


def atomic_write(path: str | os.PathLike, chunks: Iterable[str]) -> None:
    """Write text to ``path`` through a temporary file in the same folder, renamed over it at the end.

    A reader never sees a half-written file; an error (or an interrupt) leaves the old file as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
