"""Trajectory records as sharegpt rows: the conversation rebuilt with the export profile's text, turned
into ``system`` / ``human`` / ``gpt`` / ``observation`` turns and ``<image>`` placeholders; the
``dataset_info.json`` entry; the LLaMA-Factory template of a checkpoint (from its family record)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from vretrver.families import FamilyError, ModelTypeMap, family_of_checkpoint
from vretrver.protocol import (
    Conversation,
    ProfileError,
    build_conversation,
    load_profile,
    observation_message,
)
from vretrver.samples import atomic_write_text
from vretrver.sft.coordinates import convert_turn, same_convention
from vretrver.sft.records import escape_placeholders, record_sample, tool_config_from_dict
from vretrver.tools import ToolConfig

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

# LLaMA-Factory template per model_type (config.json): the one that renders our text exactly, from the
# family records (vretrver.families); follows families registered later.
TEMPLATES = ModelTypeMap("llamafactory_template")


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
    """The LLaMA-Factory template for a checkpoint, from its family (config.json model_type)."""
    try:
        return family_of_checkpoint(model_path).llamafactory_template
    except (FamilyError, ValueError) as e:
        raise ExportError(str(e)) from None


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
