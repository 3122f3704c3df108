"""Export trajectory records as a LLaMA-Factory dataset: every row validated (placeholders = images, the
files open, roles alternate, the length within ``cutoff_len``), tool images copied next to the dataset,
the ``dataset_info.json`` entry and a report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vretrver.integrations.llamafactory.rows import (
    IMAGE,
    ExportError,
    _resolve,
    conversation_to_sharegpt,
    record_to_conversation,
    update_dataset_info,
)
from vretrver.integrations.llamafactory.tokens import TokenCounter
from vretrver.samples import SampleError, atomic_write_text, safe_name
from vretrver.sft.coordinates import same_convention
from vretrver.sft.records import PLACEHOLDERS, iter_records, tool_config_from_dict
from vretrver.tools import ToolConfig


class ImageCache:
    """Image size by path; a file that is missing or does not open gives an error text (cached too)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int] | None, str | None]] = {}

    def __call__(self, path: str) -> tuple[tuple[int, int] | None, str | None]:
        if path not in self._cache:
            from PIL import Image

            if not os.path.isfile(path):
                self._cache[path] = (None, f"image file not found: {path}")
            else:
                try:
                    with Image.open(path) as im:
                        size = im.size
                        im.verify()
                    self._cache[path] = (size, None)
                except Exception as e:  # any decoder error means LLaMA-Factory cannot read it either
                    self._cache[path] = (None, f"image does not open: {path} ({type(e).__name__}: {e})")
        return self._cache[path]


def validate_row(
    row: dict[str, Any], media_dir: str | os.PathLike, images: ImageCache | None = None
) -> tuple[list[str], list[tuple[int, int]]]:
    """Problems that would make LLaMA-Factory skip, misread or crash on a row; and the image sizes."""
    images = images or ImageCache()
    problems: list[str] = []
    turns = row.get("conversations") or []
    body = turns[1:] if turns and turns[0].get("from") == "system" else turns
    for i, t in enumerate(body):
        allowed = ("human", "observation") if i % 2 == 0 else ("gpt", "function_call")
        if t.get("from") not in allowed:
            problems.append(
                f"turn {i + len(turns) - len(body)}: role {t.get('from')!r} where {' or '.join(allowed)} must come"
            )
            break
        if not isinstance(t.get("value"), str):
            problems.append(f"turn {i}: value must be a string")
            break
    if not body or body[0].get("from") != "human":
        problems.append("the conversation must open with a human turn (after the system turn)")
    if body and len(body) % 2:
        problems.append("the conversation must end with a gpt turn")
    n_ph = sum(str(t.get("value", "")).count(IMAGE) for t in turns)
    paths = row.get("images") or []
    if n_ph != len(paths):
        problems.append(f"{n_ph} {IMAGE} placeholders but {len(paths)} images")
    for ph in PLACEHOLDERS[1:]:
        if any(ph in str(t.get("value", "")) for t in turns):
            problems.append(f"literal {ph} in the text (no such media is exported)")
    sizes: list[tuple[int, int]] = []
    for p in paths:
        size, err = images(_resolve(Path(media_dir), p))
        if err:
            problems.append(err)
        else:
            sizes.append(size)
    return problems, sizes


# ----------------------------------------------------------------------------- export


@dataclass
class ExportConfig:
    name: str = "vretrver_sft"  # dataset name: <name>.json, <name>_images/, the dataset_info entry
    profile: str | None = None  # export profile (default: each record's export_profile)
    coordinates: str | None = None  # crop-box convention of the student (default: the record's own)
    tool_config: ToolConfig | None = None  # full student tool settings (overrides coordinates / model)
    model: str | None = None  # student checkpoint: token counting, and its crop convention
    cutoff_len: int = 32768
    image_max_pixels: int = 2_000_000
    image_min_pixels: int = 32 * 32  # LLaMA-Factory's default
    over_cutoff: str = "drop"  # "drop" | "keep" samples longer than cutoff_len (they are counted either way)
    only_kept: bool = True  # export only the records the filter kept
    absolute_paths: bool = False  # list tool images by absolute path (default: relative to the data dir)

    def __post_init__(self) -> None:
        if self.over_cutoff not in ("drop", "keep"):
            raise ValueError(f"over_cutoff must be 'drop' or 'keep', got {self.over_cutoff!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"dataset name must be a plain file name, got {self.name!r}")


RecordSource = str | os.PathLike | tuple[dict[str, Any], str | os.PathLike]


def _iter_sources(
    sources: RecordSource | Sequence[RecordSource],
) -> Iterator[tuple[str, dict[str, Any], Path]]:
    if isinstance(sources, (str, os.PathLike)) or (
        isinstance(sources, tuple) and isinstance(sources[0], dict)
    ):
        sources = [sources]  # type: ignore[list-item]
    for src in sources:  # type: ignore[union-attr]
        if isinstance(src, tuple):
            rec, base = src
            yield str(rec.get("id")), rec, Path(base)
        else:
            path = Path(src)
            if path.is_dir():
                path = path / "trajectories.jsonl"
            for where, rec in iter_records(path):
                yield where, rec, path.resolve().parent


def _stats(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    v = sorted(values)
    return {
        "min": v[0],
        "median": v[len(v) // 2],
        "p95": v[min(len(v) - 1, int(0.95 * len(v)))],
        "max": v[-1],
        "mean": round(sum(v) / len(v)),
    }


Row = tuple[dict[str, Any], list[tuple[int, str]]]  # a sharegpt row, and its tool images (index, path)


@dataclass
class _Tally:
    """What the export read, left out and changed, for the report."""

    read: int = 0
    not_kept: int = 0
    escaped: int = 0
    converted: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    over: list[tuple[str, int]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def drop(self, reason: str, rid: str, detail: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples) < 50:
            self.examples.append({"id": rid, "reason": reason, "detail": detail[:500]})


def export_llamafactory(
    sources: RecordSource | Sequence[RecordSource],
    data_dir: str | os.PathLike,
    config: ExportConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the kept trajectories of ``sources`` (records files or run folders) as a LLaMA-Factory dataset.

    Writes ``data_dir/<name>.json`` (sharegpt rows), the tool images under ``data_dir/<name>_images/``,
    the ``dataset_info.json`` entry and ``data_dir/<name>.report.json``; returns the report. Every row
    is validated first (placeholders = images, files exist and open, roles alternate, length within
    ``cutoff_len`` when ``model`` is given); rows that fail are left out and counted by reason.
    """
    cfg = config or ExportConfig()
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    counter = TokenCounter(cfg.model, cfg.image_max_pixels, cfg.image_min_pixels) if cfg.model else None
    target: ToolConfig | None = cfg.tool_config
    if target is None and counter is not None and cfg.coordinates is None:
        target = ToolConfig.from_processor(counter.processor)
    tally = _Tally()
    rows = _collect_rows(sources, data, cfg, counter, target, tally, progress)
    file_name = _write_dataset(rows, data, cfg)

    per_task = Counter(r["task"] for r, _ in rows)
    report = {
        "name": cfg.name,
        "file": str(data / file_name),
        "records_read": tally.read,
        "records_not_kept": tally.not_kept,
        "rows": len(rows),
        "rows_per_task": dict(sorted(per_task.items())),
        "rows_per_source": dict(Counter(r.get("source", "unlabelled") for r, _ in rows)),
        "images": sum(len(r["images"]) for r, _ in rows),
        "tool_images": sum(len(t) for _, t in rows),
        "dropped": dict(tally.dropped),
        "dropped_examples": tally.examples,
        "escaped_placeholders": tally.escaped,
        "crop_boxes_converted_records": tally.converted,
        "cutoff_len": cfg.cutoff_len,
        "over_cutoff_len": {
            "count": len(tally.over),
            "policy": cfg.over_cutoff,
            "ids": [i for i, _ in tally.over[:100]],
        },
        "tokens": _stats(tally.lengths) if counter is not None else "not counted (pass a model to count)",
    }
    atomic_write_text(
        data / f"{cfg.name}.report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    )
    return report


def _collect_rows(
    sources: RecordSource | Sequence[RecordSource],
    data: Path,
    cfg: ExportConfig,
    counter: TokenCounter | None,
    target: ToolConfig | None,
    tally: _Tally,
    progress: bool,
) -> list[Row]:
    """The valid rows of the records, in order; every record left out is counted in ``tally``."""
    image_cache = ImageCache()
    rows: list[Row] = []
    seen: set[str] = set()
    for where, rec, base in tqdm(_iter_sources(sources), desc="export", disable=not progress):
        tally.read += 1
        rid = str(rec.get("id"))
        if cfg.only_kept and not rec.get("kept"):
            tally.not_kept += 1
            continue
        if rid in seen:
            tally.drop("duplicate_id", rid, where)
            continue
        seen.add(rid)
        try:
            dst = target
            if dst is None and cfg.coordinates and cfg.coordinates != rec["coordinates"]:
                dst = ToolConfig(coordinates=cfg.coordinates)
            conv, n_user = record_to_conversation(rec, base, cfg.profile, dst)
            turns, images, n_esc = conversation_to_sharegpt(conv)
        except (ExportError, SampleError, OSError, KeyError, ValueError) as e:
            tally.drop("unreadable_record", rid, f"{where}: {type(e).__name__}: {e}")
            continue
        if dst is not None:
            src = replace(tool_config_from_dict(rec.get("tool_config")), coordinates=rec["coordinates"])
            tally.converted += not same_convention(src, dst)
        row = {
            "id": rid,
            "task": rec.get("task") or "",
            "conversations": turns,
            "images": [str(p) for p in images],
        }
        if rec.get("source"):  # who wrote the turns, e.g. "oracle (synthetic)"; LLaMA-Factory ignores it
            row["source"] = rec["source"]
        problems, sizes = validate_row(row, data, image_cache)
        if problems:
            tally.drop("invalid_row", rid, f"{where}: " + "; ".join(problems))
            continue
        if counter is not None:
            n = counter.count(row, sizes)
            tally.lengths.append(n)
            if n > cfg.cutoff_len:
                tally.over.append((rid, n))
                if cfg.over_cutoff == "drop":
                    tally.dropped["over_cutoff_len"] += 1
                    continue
        tally.escaped += n_esc
        tool_images = [(i, row["images"][i]) for i in range(n_user, len(row["images"]))]
        rows.append((row, tool_images))
    return rows


def _write_dataset(rows: list[Row], data: Path, cfg: ExportConfig) -> str:
    """Write the rows, their tool images and the dataset_info entry; returns the dataset file name."""
    # Tool images: copied next to the dataset (built aside, then swapped in) so the folder is self-contained.
    images_rel = f"{cfg.name}_images"
    final_images = data / images_rel
    tmp_images = Path(tempfile.mkdtemp(prefix=f".{images_rel}.", dir=data))
    try:
        for row, tool_images in rows:
            folder = safe_name(row["id"])
            for j, (i, src_path) in enumerate(tool_images):
                name = f"{j}_{Path(src_path).name}"
                (tmp_images / folder).mkdir(parents=True, exist_ok=True)
                _link_or_copy(src_path, tmp_images / folder / name)
                rel = f"{images_rel}/{folder}/{name}"
                row["images"][i] = str(final_images / folder / name) if cfg.absolute_paths else rel
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r, _ in rows) + "\n]\n"
        if final_images.exists():
            shutil.rmtree(final_images)
        os.replace(tmp_images, final_images)
    except BaseException:
        shutil.rmtree(tmp_images, ignore_errors=True)
        raise
    file_name = f"{cfg.name}.json"
    atomic_write_text(data / file_name, text)
    update_dataset_info(data, cfg.name, file_name)
    return file_name


def _link_or_copy(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
