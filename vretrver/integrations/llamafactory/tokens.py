"""A row's sequence length as LLaMA-Factory will build it, without loading LLaMA-Factory: the row rendered
with its family's chat format (:class:`vretrver.families.ChatFormat`), tokenized by the checkpoint's
tokenizer, each image counted as the Qwen-VL plugins resize it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from vretrver.families import CHATML, ChatFormat, family_of_processor
from vretrver.integrations.llamafactory.rows import IMAGE
from vretrver.tools import smart_resize


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
    """Sequence length of a row as LLaMA-Factory will see it, from the checkpoint's tokenizer and processor
    and the chat format of its family."""

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
        self.chat_format = family_of_processor(self.processor).chat_format

    def image_tokens(self, size: tuple[int, int]) -> int:
        return lf_image_tokens(
            size, self.image_max_pixels, self.image_min_pixels, self.factor, self.min_pixels, self.max_pixels
        )

    def count(self, row: dict[str, Any], sizes: Sequence[tuple[int, int]]) -> int:
        text = render_chatml(row, self.chat_format).replace(IMAGE, self.chat_format.image)
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return n + sum(self.image_tokens(s) - 1 for s in sizes)


def render_chatml(row: dict[str, Any], chat_format: ChatFormat = CHATML) -> str:
    """The text of a row as a chat format renders it (default: the Qwen templates' ChatML), ``<image>``
    placeholders left in place."""
    out = []
    for t in row["conversations"]:
        head, tail = chat_format.wrap(t["from"])
        out.append(head + t["value"] + tail)
    return "".join(out)
