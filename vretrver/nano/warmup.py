"""Warm-up rows for the nano model: the turn that asked for a crop, the crop, then the opening the teacher
wrote after it: the query restated, the crop named and the verdict
("<think>Looking for red. Candidate 3: orange. No.").

A random model trained on whole trajectories learns their format long before it learns to read a crop
or to judge it: the colour name and the verdict are a few tokens among hundreds it can already predict.
On these short rows (about 8x more rows a second) the same model names the crops and learns the verdict
within a few hundred steps of 32 rows. The turn before the crop is there because in a trajectory the
verdict must look past the colours named earlier: a warm-up on the crop and the query alone taught a
comparison that held on its own rows (200 / 200) and failed inside trajectories. The trajectory SFT then
starts from this checkpoint and keeps drawing these rows (``CROP_MIX`` in ``run_nano.sh``), or the
verdict is forgotten while the trajectories' format is learned. The rows are read from the exported
LLaMA-Factory dataset, so they show the very crops (and the teacher's words) of the trajectories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vretrver.nano.teacher import OPENING
from vretrver.samples import atomic_write_text


def crop_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per tool result of the sharegpt ``rows``: the turn that asked for the crop, then the crop,
    as the user turn; the opening of the teacher's next turn (up to its verdict) as the answer. A crop
    whose next turn names nothing is left out."""
    out = []
    for row in rows:
        turns, images = row["conversations"], row["images"]
        seen = 0  # <image> placeholders before the current turn: the index of its first image
        for i, turn in enumerate(turns):
            n = turn["value"].count("<image>")
            if turn["from"] == "observation" and n == 1 and i + 1 < len(turns):
                named = OPENING.match(turns[i + 1]["value"])
                if named:
                    # The turn that asked for the crop comes first: it restates the query and names the
                    # earlier crops, the distractors the verdict must look past.
                    before = turns[i - 1]["value"] if turns[i - 1]["from"] == "gpt" else ""
                    out.append(
                        {
                            "id": f"{row['id']}#crop{len(out)}",
                            "conversations": [
                                {"from": "human", "value": f"{before}\n<image>"},
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
