"""Rewrite the ``bbox_2d`` of ``crop_image`` calls from one coordinate convention to another.

A teacher (Qwen2.5-VL-72B) writes absolute pixels of the image as ITS processor resized it; a Qwen3-VL
student reads and writes relative coordinates from 0 to 1000, and a Qwen2.5-VL student with other
resize bounds sees other pixel sizes. Exporting a trajectory for a student therefore maps each box to
the original image's pixels (exactly as :mod:`vretrver.tools` reads it) and from there to the student's
convention. Only the numbers of the ``bbox_2d`` array change; the rest of the turn is kept as written.
Boxes with all values in [0, 1] mean the same thing in every convention and are left alone.
"""

from __future__ import annotations

import json
import re

from vretrver.protocol.parser import parse_turn
from vretrver.tools import ToolConfig, load_image, smart_resize

_BBOX = re.compile(r'("bbox_2d"\s*:\s*)\[[^\[\]]*\]')


def _scale(cfg: ToolConfig, w: int, h: int) -> tuple[float, float]:
    """Model units per original pixel along x and y under ``cfg``."""
    if cfg.coordinates == "qwen3-vl":
        return 1000 / w, 1000 / h
    rh, rw = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return rw / w, rh / h


def same_convention(a: ToolConfig, b: ToolConfig) -> bool:
    if a.coordinates != b.coordinates:
        return False
    if a.coordinates == "qwen3-vl":
        return True
    return (a.factor, a.min_pixels, a.max_pixels) == (b.factor, b.min_pixels, b.max_pixels)


def convert_box(
    box: list[float], size: tuple[int, int], src: ToolConfig, dst: ToolConfig
) -> list[int | float]:
    """``box`` in ``src`` units of an image of original ``size`` (w, h), expressed in ``dst`` units."""
    if all(0.0 <= float(v) <= 1.0 for v in box):
        return list(box)
    w, h = size
    sx, sy = _scale(src, w, h)
    dx, dy = _scale(dst, w, h)
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1 / sx * dx), round(y1 / sy * dy), round(x2 / sx * dx), round(y2 / sy * dy)]


def convert_turn(text: str, images: list[str | None], src: ToolConfig, dst: ToolConfig) -> str:
    """``text`` with the crop box of its tool call (if any) converted; ``images[i]`` is image i's path."""
    if same_convention(src, dst):
        return text
    parsed = parse_turn(text)
    call = parsed.tool_call
    if parsed.kind != "tool_call" or call is None or call.error or call.name != "crop_image":
        return text
    box, idx = call.arguments.get("bbox_2d"), call.arguments.get("target_image")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        return text
    if not isinstance(idx, int) or not 0 <= idx < len(images) or images[idx] is None:
        return text
    size = load_image(images[idx]).size
    new = json.dumps(convert_box(box, size, src, dst))
    start, end = parsed.span  # the call the parser chose (after </think>), not a tag the reasoning mentions
    new_body, n = _BBOX.subn(lambda mm: mm.group(1) + new, text[start:end], count=1)
    if n == 0:
        return text
    return text[:start] + new_body + text[end:]
