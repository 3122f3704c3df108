"""Build the chat conversation for a sample (and its tool observations) from a profile's templates.

A conversation is a list of chat messages in the Hugging Face / OpenAI shape, where the content of a
message is a string or a list of ``{"type": "text", "text": ...}`` and ``{"type": "image"}`` parts, plus
the images in the order of their parts. Every engine renders it through the checkpoint's own chat
template, so the same sample gives the same prompt everywhere.

Tool results are user messages wrapped in ``<tool_response>`` tags by the profile's observation
template: this renders identically under the Qwen2.5-VL and Qwen3-VL chat templates, in LLaMA-Factory
and in the RL rollout.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import jinja2
from PIL import Image

from vretrver.protocol.profile import Profile, ProfileError, load_profile
from vretrver.samples import Sample

# An image is a file path until something loads it; tool results are already PIL images.
ImageLike = str | Image.Image


@dataclass
class Conversation:
    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageLike] = field(default_factory=list)

    def copy(self) -> Conversation:
        return Conversation([dict(m) for m in self.messages], list(self.images))

    def add_assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def add_user(self, parts: list[dict[str, Any]], images: list[ImageLike]) -> None:
        self.messages.append({"role": "user", "content": parts})
        self.images.extend(images)


def _render_parts(template, variables: dict[str, Any]) -> tuple[list[dict[str, Any]], list[ImageLike]]:
    """Render a template whose ``image(x)`` calls become image parts, in order."""
    images: list[ImageLike] = []
    # A fresh random marker per render: sample text can never forge or break an image placeholder.
    nonce = secrets.token_hex(8)

    def image(x: ImageLike) -> str:
        images.append(x)
        return f"\x00{nonce}:{len(images) - 1}\x00"

    try:
        text = template.render(image=image, **variables)
    except jinja2.TemplateError as e:
        raise ProfileError(f"{template.filename}: template error: {e}") from None
    parts: list[dict[str, Any]] = []
    # pieces alternate: text, image number, text, image number, ...
    pieces = re.split(f"\x00{nonce}:(\\d+)\x00", text)
    for i, piece in enumerate(pieces):
        if i % 2 == 1:
            parts.append({"type": "image"})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts, images


def system_prompt(profile: Profile, coordinates: str = "qwen2.5-vl") -> str:
    template = profile.templates["system"]
    try:
        return template.render(tools=profile.tool_schemas(coordinates)).strip()
    except jinja2.TemplateError as e:
        raise ProfileError(f"{template.filename}: template error: {e}") from None


def build_conversation(
    sample: Sample,
    profile: Profile | str = "v-retrver",
    coordinates: str = "qwen2.5-vl",
    max_tool_calls: int | None = None,
) -> Conversation:
    """The opening conversation (system + user turn) for reranking ``sample.candidates``."""
    profile = load_profile(profile)
    k = len(sample.candidates)
    parts, images = _render_parts(
        profile.templates["user"],
        {
            "query": sample.query,
            "candidates": sample.candidates,
            "max_tool_calls": profile.max_tool_calls if max_tool_calls is None else max_tool_calls,
            "example_ranking": ", ".join(str(i) for i in range(1, min(k, 3) + 1))
            + (", ..." if k > 3 else ""),
            "task": sample.task,
        },
    )
    if parts and parts[-1]["type"] == "text":
        parts[-1]["text"] = parts[-1]["text"].rstrip("\n")
    conv = Conversation()
    conv.messages.append({"role": "system", "content": system_prompt(profile, coordinates)})
    conv.add_user(parts, images)
    return conv


def observation_message(
    profile: Profile,
    tool: str | None,
    indices: list[int],
    images: list[ImageLike],
    error: str | None = None,
) -> tuple[list[dict[str, Any]], list[ImageLike]]:
    """The user-turn parts (and images) that show a tool result or a tool error to the model."""
    parts, shown = _render_parts(
        profile.templates["observation"],
        {"tool": tool or "", "indices": indices, "images": images, "error": error or ""},
    )
    return parts, shown
