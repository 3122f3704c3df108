"""The files a run appends to: read back with damaged lines dropped, appended with one fsynced write."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vretrver.jsonl import dumps_line, read_appended


def read_rows(path: Path, consequence: str = "") -> tuple[list[dict[str, Any]], bool]:
    """Rows of a file we append to, and whether every line was whole.

    A damaged line is dropped on its own and reported with its file and line (``consequence`` says
    what follows from that); a torn last line (an interrupted write) is dropped quietly.
    """
    found = read_appended(path)
    for msg in found.damaged:
        print(f"[eval] {msg}: damaged line dropped{consequence}", file=sys.stderr)
    return found.rows, found.intact


def append_lines(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows as one write, flushed to disk, so a crash tears at most the last line."""
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(dumps_line(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
