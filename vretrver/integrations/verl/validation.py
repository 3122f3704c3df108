"""Checks of an RL parquet file (:mod:`.dataset` writes it) against what verl's ``RLHFDataset`` and our
agent loop need; every problem is an :class:`RLDataError` naming the row and the field."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from vretrver.integrations.verl import AGENT_NAME, SAMPLE_INFO_KEY
from vretrver.protocol import load_profile
from vretrver.protocol.profile import Profile
from vretrver.tools import COORDINATES

IMAGE_MARKER = "<image>"
_INFO = f"extra_info.{SAMPLE_INFO_KEY}"


class RLDataError(ValueError):
    """A sample cannot become an RL row, or an RL parquet file is malformed (message names where)."""


def read_rl_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _check(cond: bool, where: str, field_name: str, expected: str, got: Any = None) -> None:
    if not cond:
        shown = "" if got is None else f", got {str(got)[:80]!r}"
        raise RLDataError(f"{where}: field '{field_name}': expected {expected}{shown}")


def _check_prompt(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    prompt = row.get("prompt")
    _check(isinstance(prompt, list) and len(prompt) >= 1, where, "prompt", "a list of messages", prompt)
    for i, m in enumerate(prompt):
        _check(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant"),
            where,
            f"prompt[{i}].role",
            "system / user / assistant",
            m,
        )
        _check(isinstance(m.get("content"), str), where, f"prompt[{i}].content", "a string", m.get("content"))
    return prompt


def _check_images(row: dict[str, Any], prompt: list[dict[str, Any]], where: str, decode: bool) -> list[Any]:
    images = row.get("images") or []
    n_markers = sum(m["content"].count(IMAGE_MARKER) for m in prompt)
    _check(
        n_markers == len(images), where, "images", f"{n_markers} images (one per <image> marker)", len(images)
    )
    kinds = {tuple(sorted(k for k, v in img.items() if v is not None)) for img in images}
    _check(
        len(kinds) <= 1 and kinds <= {("bytes",), ("image",)},
        where,
        "images",
        "one representation: {'bytes'} or {'image': path}",
        kinds,
    )
    if decode:
        for j, img in enumerate(images):
            try:
                src = io.BytesIO(img["bytes"]) if img.get("bytes") is not None else img["image"]
                with Image.open(src) as im:
                    im.size  # noqa: B018
            except (OSError, ValueError, KeyError, Image.DecompressionBombError) as e:
                raise RLDataError(f"{where}: field 'images[{j}]': not a readable image ({e})") from None
    return images


def _check_ground_truth(row: dict[str, Any], info: dict[str, Any], where: str) -> int:
    """The number of candidates K, once the ground truth is checked against it."""
    k = info.get("num_candidates")
    _check(isinstance(k, int) and k >= 1, where, f"{_INFO}.num_candidates", "an integer >= 1", k)
    gt = (row.get("reward_model") or {}).get("ground_truth")
    _check(
        isinstance(gt, list) and gt and all(isinstance(g, int) and 1 <= g <= k for g in gt),
        where,
        "reward_model.ground_truth",
        f"candidate numbers between 1 and {k}",
        gt,
    )
    return k


def _check_sample_info(info: dict[str, Any], k: int, n_images: int, where: str) -> Profile:
    """The per-sample settings; returns the sample's profile."""
    coords = info.get("coordinates")
    _check(coords in COORDINATES, where, f"{_INFO}.coordinates", f"one of {COORDINATES}", coords)
    try:
        profile = load_profile(info.get("profile"))
    except Exception as e:
        raise RLDataError(f"{where}: field '{_INFO}.profile': {e}") from None
    image_map = info.get("image_map")
    # Compact tool indices number only the candidates that have an image: the map may be shorter.
    compact = profile.settings.get("candidate_image_index") == "compact"
    _check(
        isinstance(image_map, list)
        and (1 <= len(image_map) <= k + 1 if compact else len(image_map) == k + 1)
        and all(-1 <= p < n_images for p in image_map),
        where,
        f"{_INFO}.image_map",
        f"{'at most ' if compact else ''}{k + 1} positions in -1..{n_images - 1}",
        image_map,
    )
    ids = info.get("candidate_ids")
    _check(isinstance(ids, list) and len(ids) == k, where, f"{_INFO}.candidate_ids", f"{k} ids", ids)
    budget = info.get("max_tool_calls")
    _check(
        isinstance(budget, int) and budget >= 0, where, f"{_INFO}.max_tool_calls", "an integer >= 0", budget
    )
    return profile


def validate_rl_row(row: dict[str, Any], where: str, decode_images: bool = False) -> None:
    """Check one row against what ``RLHFDataset`` and the agent loop need."""
    prompt = _check_prompt(row, where)
    images = _check_images(row, prompt, where, decode_images)
    extra = row.get("extra_info") or {}
    info = extra.get(SAMPLE_INFO_KEY)
    _check(isinstance(info, dict), where, _INFO, "an object")
    k = _check_ground_truth(row, info, where)
    profile = _check_sample_info(info, k, len(images), where)
    tools_kwargs = extra.get("tools_kwargs") or {}
    for name in profile.tools:  # every tool of the profile gets the sample's image map
        got = ((tools_kwargs.get(name) or {}).get("create_kwargs") or {}).get("image_map")
        _check(
            got == info["image_map"],
            where,
            f"extra_info.tools_kwargs.{name}.create_kwargs.image_map",
            "the sample's image map",
            got,
        )
    _check(row.get("agent_name") == AGENT_NAME, where, "agent_name", repr(AGENT_NAME), row.get("agent_name"))


def validate_rl_parquet(path: str | os.PathLike, decode_images: bool = False) -> dict[str, Any]:
    """Validate every row of an RL parquet file; returns counts. Raises :class:`RLDataError`."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise RLDataError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise RLDataError(f"{path}: not a parquet file ({e})") from None
    names = set(pf.schema_arrow.names)
    missing = sorted({"prompt", "images", "reward_model", "extra_info", "data_source", "agent_name"} - names)
    if missing:
        raise RLDataError(f"{path}: missing columns {missing}")
    n = 0
    stats: Counter = Counter()
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            validate_rl_row(row, f"{path}: row {n}", decode_images)
            stats["images"] += len(row.get("images") or [])
            stats[f"profile={row['extra_info'][SAMPLE_INFO_KEY]['profile']}"] += 1
            n += 1
    if n == 0:
        raise RLDataError(f"{path}: no rows")
    return {"rows": n, **dict(stats)}
