"""LLaMA-Factory (0.9.5) integration: export trajectories as a sharegpt dataset, validate it, and render it
through LLaMA-Factory's own data pipeline for checks. The only module that imports ``llamafactory``.

The exported text is exactly what our protocol sends at inference and in RL rollouts:

* the first turn is ``system``: our rendered system prompt, tool schemas included (no ``tools`` column,
  so LLaMA-Factory adds nothing of its own);
* the first user turn is ``human``: the profile's user prompt, one ``<image>`` per image part;
* assistant turns are ``gpt`` turns holding the raw assistant text (``<think>`` ... ``<tool_call>`` ...);
* tool results are ``observation`` turns holding what sits between ``<tool_response>\\n`` and
  ``\\n</tool_response>`` in our user message: the Qwen templates (``qwen2_vl``, ``qwen3_vl_nothink``)
  wrap observations as ``<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>``, which is
  character for character our user message. A profile whose observations are not wrapped that way is
  exported as ``human`` turns instead (same text either way).

Images are listed in ``<image>`` order: the query and candidate images of the sample (their own paths),
then the images the tools returned (copied into ``<dataset>_images/`` next to the dataset file).
Literal ``<image>`` / ``<video>`` / ``<audio>`` strings in text would be read as placeholders: they are
escaped (and counted), which training samples built by :mod:`vretrver.sft` never need.

For Qwen3-VL use the ``qwen3_vl_nothink`` template: ``qwen3_vl`` is a reasoning template that edits
``<think>`` blocks of assistant turns.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vretrver.protocol import (
    Conversation,
    ProfileError,
    build_conversation,
    load_profile,
    observation_message,
)
from vretrver.samples import SampleError, atomic_write_text, safe_name
from vretrver.sft.coordinates import convert_turn, same_convention
from vretrver.sft.records import (
    PLACEHOLDERS,
    escape_placeholders,
    iter_records,
    record_sample,
    tool_config_from_dict,
)
from vretrver.tools import ToolConfig, smart_resize

IMAGE = "<image>"
OBS_OPEN = "<tool_response>\n"
OBS_CLOSE = "\n</tool_response>"

# The sharegpt column / tag mapping of every dataset we write.
DATASET_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}

# LLaMA-Factory template per model_type (config.json): the one that renders our text exactly.
TEMPLATES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl_nothink",
    "qwen3_vl_moe": "qwen3_vl_nothink",
}

# How the Qwen templates wrap each role (used to count tokens without loading LLaMA-Factory).
_CHATML = {
    "system": ("<|im_start|>system\n", "<|im_end|>\n"),
    "human": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "observation": ("<|im_start|>user\n" + OBS_OPEN, OBS_CLOSE + "<|im_end|>\n<|im_start|>assistant\n"),
    "gpt": ("", "<|im_end|>\n"),
}


class ExportError(ValueError):
    """A record cannot be turned into a training conversation."""


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of a dataset written by :func:`export_llamafactory`."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
        "tags": dict(DATASET_TAGS),
    }


def update_dataset_info(data_dir: str | os.PathLike, name: str, file_name: str) -> Path:
    """Add (or replace) ``name`` in ``data_dir/dataset_info.json``, keeping every other entry."""
    path = Path(data_dir) / "dataset_info.json"
    info: dict[str, Any] = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ExportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(info, dict):
            raise ExportError(f"{path}: expected a JSON object of dataset entries")
    info[name] = dataset_info_entry(file_name)
    atomic_write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


def template_for_model(model_path: str | os.PathLike) -> str:
    """The LLaMA-Factory template for a checkpoint, from its ``config.json`` model_type."""
    from vretrver.engines.render import checkpoint_model_type

    cfg_path = Path(model_path) / "config.json"
    try:
        model_type = checkpoint_model_type(model_path)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if model_type not in TEMPLATES:
        raise ExportError(
            f"{cfg_path}: model_type {model_type!r} has no known template (known: {sorted(TEMPLATES)})"
        )
    return TEMPLATES[model_type]


# ----------------------------------------------------------------------------- conversation -> row


def _text_of(content: Any) -> tuple[str, int]:
    if isinstance(content, str):
        return escape_placeholders(content)
    out, n = [], 0
    for part in content:
        if part.get("type") == "image":
            out.append(IMAGE)
        elif part.get("type") == "text":
            t, k = escape_placeholders(part.get("text", ""))
            out.append(t)
            n += k
        else:
            raise ExportError(f"unsupported message part type {part.get('type')!r}")
    return "".join(out), n


def conversation_to_sharegpt(conv: Conversation) -> tuple[list[dict[str, str]], list[Any], int]:
    """Sharegpt turns and images of a conversation, and how many literal placeholders were escaped."""
    turns: list[dict[str, str]] = []
    escaped = 0
    for i, m in enumerate(conv.messages):
        text, n = _text_of(m.get("content", ""))
        escaped += n
        role = m.get("role")
        if role == "system":
            if i != 0:
                raise ExportError("a system message is only allowed first")
            turns.append({"from": "system", "value": text})
        elif role == "assistant":
            turns.append({"from": "gpt", "value": text})
        elif role == "user":
            is_obs = (
                turns
                and turns[-1]["from"] == "gpt"
                and text.startswith(OBS_OPEN)
                and text.endswith(OBS_CLOSE)
            )
            if is_obs and len(text) >= len(OBS_OPEN) + len(OBS_CLOSE):
                turns.append(
                    {"from": "observation", "value": text[len(OBS_OPEN) : len(text) - len(OBS_CLOSE)]}
                )
            else:
                turns.append({"from": "human", "value": text})
        else:
            raise ExportError(f"unsupported message role {role!r}")
    return turns, list(conv.images), escaped


def _resolve(base: Path, p: str) -> str:
    return p if os.path.isabs(p) else str(base / p)


def _obs_text(parts: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") if p["type"] == "text" else IMAGE for p in parts)


def record_to_conversation(
    record: dict[str, Any],
    base_dir: str | os.PathLike,
    profile: str | None = None,
    tool_config: ToolConfig | None = None,
) -> tuple[Conversation, int]:
    """Rebuild the conversation of a trajectory record with the export profile's text.

    ``tool_config`` is the student's convention for crop boxes (default: the record's own); boxes are
    converted when it differs. Returns the conversation (images as file paths) and the number of user
    images (the query and candidate images; the rest came from tools).
    """
    base = Path(base_dir)
    sample = record_sample(record, base, where=str(record.get("id")))
    prof = load_profile(profile or record.get("export_profile") or record["profile"])
    src = replace(tool_config_from_dict(record.get("tool_config")), coordinates=record["coordinates"])
    dst = tool_config or src
    conv = build_conversation(sample, prof, dst.coordinates, record["max_tool_calls"])
    n_user_images = len(conv.images)
    # Tool image indices as the model ran: its profile says what index k means.
    try:
        ran_with = load_profile(record["profile"])
    except ProfileError:  # a profile folder that is gone: the export profile's rule
        ran_with = prof
    paths = ran_with.tool_images(sample.image_paths())
    for n, t in enumerate(record["trajectory"]["turns"]):
        role = t.get("role")
        if role == "assistant":
            text = t.get("text")
            if not isinstance(text, str):
                raise ExportError(f"turn {n}: expected the assistant text")
            conv.add_assistant(text if same_convention(src, dst) else convert_turn(text, paths, src, dst))
        elif role == "tool":
            tool = t.get("tool") or {}
            images = [_resolve(base, p) for p in t.get("images") or []]
            if tool.get("valid") and not images:
                raise ExportError(f"turn {n}: the tool's images were not saved with the record")
            parts, shown = observation_message(
                prof,
                tool.get("name"),
                tool.get("indices") or [],
                images,
                tool.get("error"),
                tool.get("valid"),
            )
            if _obs_text(parts) != t.get("text"):
                raise ExportError(
                    f"turn {n}: profile {prof.name!r} renders this tool result differently from the profile "
                    f"the model ran with ({record.get('profile')!r}); their observation templates must match"
                )
            conv.add_user(parts, shown)
        else:
            raise ExportError(f"turn {n}: unknown role {role!r}")
    return conv, n_user_images


# ----------------------------------------------------------------------------- validation


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


def lf_image_tokens(
    size: tuple[int, int],
    image_max_pixels: int,
    image_min_pixels: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
) -> int:
    """Image tokens LLaMA-Factory's Qwen-VL plugins give an image of ``size`` (w, h).

    LLaMA-Factory first resizes to within [image_min_pixels, image_max_pixels] (and to sides >= 28, aspect
    ratio <= 200), then the processor smart-resizes to multiples of ``factor``.
    """
    w, h = size
    if w * h > image_max_pixels:
        f = math.sqrt(image_max_pixels / (w * h))
        w, h = int(w * f), int(h * f)
    if w * h < image_min_pixels:
        f = math.sqrt(image_min_pixels / (w * h))
        w, h = int(w * f), int(h * f)
    if min(w, h) < 28:
        w, h = max(w, 28), max(h, 28)
    if w / h > 200:
        w, h = h * 180, h
    if h / w > 200:
        w, h = w, w * 180
    rh, rw = smart_resize(h, w, factor, min_pixels, max_pixels)
    return (rh // factor) * (rw // factor)


class TokenCounter:
    """Sequence length of a row as LLaMA-Factory will see it, from the checkpoint's tokenizer and processor."""

    def __init__(self, model_path: str | os.PathLike, image_max_pixels: int, image_min_pixels: int):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(model_path))
        self.tokenizer = self.processor.tokenizer
        ip = self.processor.image_processor
        self.factor = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
        size = getattr(ip, "size", None) or {}
        self.min_pixels = int(getattr(ip, "min_pixels", None) or size.get("shortest_edge") or 3136)
        self.max_pixels = int(getattr(ip, "max_pixels", None) or size.get("longest_edge") or 12845056)
        self.image_max_pixels = image_max_pixels
        self.image_min_pixels = image_min_pixels

    def image_tokens(self, size: tuple[int, int]) -> int:
        return lf_image_tokens(
            size, self.image_max_pixels, self.image_min_pixels, self.factor, self.min_pixels, self.max_pixels
        )

    def count(self, row: dict[str, Any], sizes: Sequence[tuple[int, int]]) -> int:
        text = render_chatml(row).replace(IMAGE, "<|vision_start|><|image_pad|><|vision_end|>")
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return n + sum(self.image_tokens(s) - 1 for s in sizes)


def render_chatml(row: dict[str, Any]) -> str:
    """The text of a row as the Qwen templates render it (``<image>`` placeholders left in place)."""
    out = []
    for t in row["conversations"]:
        head, tail = _CHATML[t["from"]]
        out.append(head + t["value"] + tail)
    return "".join(out)


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
    image_cache = ImageCache()
    images_rel = f"{cfg.name}_images"

    rows: list[tuple[dict[str, Any], list[tuple[int, str]]]] = []
    dropped: Counter = Counter()
    examples: list[dict[str, str]] = []
    over: list[tuple[str, int]] = []
    lengths: list[int] = []
    escaped = converted = read = not_kept = 0
    seen: set[str] = set()

    def drop(reason: str, rid: str, detail: str) -> None:
        dropped[reason] += 1
        if len(examples) < 50:
            examples.append({"id": rid, "reason": reason, "detail": detail[:500]})

    for where, rec, base in tqdm(_iter_sources(sources), desc="export", disable=not progress):
        read += 1
        rid = str(rec.get("id"))
        if cfg.only_kept and not rec.get("kept"):
            not_kept += 1
            continue
        if rid in seen:
            drop("duplicate_id", rid, where)
            continue
        seen.add(rid)
        try:
            dst = target
            if dst is None and cfg.coordinates and cfg.coordinates != rec["coordinates"]:
                dst = ToolConfig(coordinates=cfg.coordinates)
            conv, n_user = record_to_conversation(rec, base, cfg.profile, dst)
            turns, images, n_esc = conversation_to_sharegpt(conv)
        except (ExportError, SampleError, OSError, KeyError, ValueError) as e:
            drop("unreadable_record", rid, f"{where}: {type(e).__name__}: {e}")
            continue
        if dst is not None:
            src = replace(tool_config_from_dict(rec.get("tool_config")), coordinates=rec["coordinates"])
            converted += not same_convention(src, dst)
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
            drop("invalid_row", rid, f"{where}: " + "; ".join(problems))
            continue
        if counter is not None:
            n = counter.count(row, sizes)
            lengths.append(n)
            if n > cfg.cutoff_len:
                over.append((rid, n))
                if cfg.over_cutoff == "drop":
                    dropped["over_cutoff_len"] += 1
                    continue
        escaped += n_esc
        tool_images = [(i, row["images"][i]) for i in range(n_user, len(row["images"]))]
        rows.append((row, tool_images))

    # Tool images: copied next to the dataset (built aside, then swapped in) so the folder is self-contained.
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

    per_task = Counter(r["task"] for r, _ in rows)
    report = {
        "name": cfg.name,
        "file": str(data / file_name),
        "records_read": read,
        "records_not_kept": not_kept,
        "rows": len(rows),
        "rows_per_task": dict(sorted(per_task.items())),
        "rows_per_source": dict(Counter(r.get("source", "unlabelled") for r, _ in rows)),
        "images": sum(len(r["images"]) for r, _ in rows),
        "tool_images": sum(len(t) for _, t in rows),
        "dropped": dict(dropped),
        "dropped_examples": examples,
        "escaped_placeholders": escaped,
        "crop_boxes_converted_records": converted,
        "cutoff_len": cfg.cutoff_len,
        "over_cutoff_len": {"count": len(over), "policy": cfg.over_cutoff, "ids": [i for i, _ in over[:100]]},
        "tokens": _stats(lengths) if counter is not None else "not counted (pass a model to count)",
    }
    atomic_write_text(
        data / f"{cfg.name}.report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    )
    return report


def _link_or_copy(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ----------------------------------------------------------------------------- LLaMA-Factory itself


def render_with_llamafactory(
    data_dir: str | os.PathLike,
    dataset: str,
    model_path: str | os.PathLike,
    template: str | None = None,
    cutoff_len: int = 32768,
    image_max_pixels: int = 2_000_000,
    image_min_pixels: int = 32 * 32,
    work_dir: str | os.PathLike | None = None,
) -> tuple[list[dict[str, list[int]]], Any]:
    """Run ``dataset`` through LLaMA-Factory's own SFT data pipeline (converter, template, multimodal
    plugin, tokenizer) and return the rows (``input_ids``, ``labels``) and the tokenizer it used.

    ``work_dir`` receives the datasets cache and the (unused) output dir; a temporary folder by default.
    """
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="vretrver-lf-"))
    args = {
        "model_name_or_path": str(model_path),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": str(data_dir),
        "template": template or template_for_model(model_path),
        "cutoff_len": cutoff_len,
        "image_max_pixels": image_max_pixels,
        "image_min_pixels": image_min_pixels,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(work / "out"),
        "cache_dir": str(work / "cache"),
        "report_to": "none",
        "use_cpu": True,
    }
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tmpl = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(tmpl, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    rows = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in module["train_dataset"]]
    return rows, tokenizer_module["tokenizer"]
