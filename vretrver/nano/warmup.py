"""Warm-up rows for the nano model: each crop of the exported trajectories alone, then the sentence the
teacher wrote about it ("Candidate 3: red.").

A random model trained on whole trajectories learns their format long before it learns to read a crop:
the one colour name per crop is a few tokens among hundreds it can already predict. On these short rows
the same model names the crops within a few hundred steps; the trajectory SFT then starts from a vision
path that already tells the colours apart. The rows are read from the exported LLaMA-Factory dataset, so
they show the very crops (and the teacher's words) of the trajectories, and nothing else.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vretrver.samples import atomic_write_text

# The teacher's reasoning opens with what the previous crop showed (see vretrver.nano.teacher).
_NAMED = re.compile(r"^<think>(?:Looking for [^.]+\. )?(Candidate \d+: [^.]+\.)")


def crop_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per tool result of the sharegpt ``rows``: the crop as the user turn, the teacher's sentence
    naming it as the answer. A crop whose next turn names nothing is left out."""
    out = []
    for row in rows:
        turns, images = row["conversations"], row["images"]
        seen = 0  # <image> placeholders before the current turn: the index of its first image
        for i, turn in enumerate(turns):
            n = turn["value"].count("<image>")
            if turn["from"] == "observation" and n == 1 and i + 1 < len(turns):
                named = _NAMED.match(turns[i + 1]["value"])
                if named:
                    out.append(
                        {
                            "id": f"{row['id']}#crop{len(out)}",
                            "conversations": [
                                {"from": "human", "value": "<image>"},
                                {"from": "gpt", "value": named.group(1)},
                            ],
                            "images": [images[seen]],
                        }
                    )
            seen += n
    return out


def write_crop_dataset(data_dir: str | os.PathLike, source: str, name: str) -> int:
    """``data_dir/<name>.json`` from the crops of ``data_dir/<source>.json``, registered in the folder's
    ``dataset_info.json`` like the source (same image paths, relative to the folder). Returns the rows."""
    data_dir = Path(data_dir)
    rows = crop_rows(json.loads((data_dir / f"{source}.json").read_text(encoding="utf-8")))
    if not rows:
        raise ValueError(f"{data_dir / source}.json: no tool result followed by a sentence naming it")
    atomic_write_text(data_dir / f"{name}.json", json.dumps(rows, ensure_ascii=False) + "\n")
    info_file = data_dir / "dataset_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8"))
    info[name] = {**info[source], "file_name": f"{name}.json"}
    atomic_write_text(info_file, json.dumps(info, indent=2) + "\n")
    return len(rows)
