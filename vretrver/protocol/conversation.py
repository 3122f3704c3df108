"""Build the chat conversation for a sample (and its tool observations) from a profile's templates.

A conversation is a list of chat messages in the Hugging Face / OpenAI shape, where the content of a
message is a string or a list of ``{"type": "text", "text": ...}`` and ``{"type": "image"}`` parts, plus
the images in the order of their parts. Every engine renders it through the checkpoint's own chat
template, so the same sample gives the same prompt everywhere.

Tool results are user messages rendered by the profile's observation template (``<tool_response>`` tags
in our profiles, the release's plain texts in ``official``): this renders identically under the
Qwen2.5-VL and Qwen3-VL chat templates, in LLaMA-Factory and in the RL rollout.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import jinja2
from PIL import Image

from vretrver.protocol.profile import Profile, ProfileError, lamra_text, load_profile
from vretrver.samples import Candidate, Sample

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
        text = template.render(tools=profile.tool_schemas(coordinates))
    except jinja2.TemplateError as e:
        raise ProfileError(f"{template.filename}: template error: {e}") from None
    return text if profile.verbatim else text.strip()


def build_conversation(
    sample: Sample,
    profile: Profile | str = "v-retrver",
    coordinates: str = "qwen2.5-vl",
    max_tool_calls: int | None = None,
) -> Conversation:
    """The opening conversation (system + user turn) for reranking ``sample.candidates``.

    A profile with the ``parquet_prompt`` setting uses the public evaluation parquet's prompt when the
    sample carries it (``sample.meta["parquet_prompt"]``), with the candidate block rebuilt for
    ``sample.candidates`` (:func:`parquet_window_prompt`).
    """
    profile = load_profile(profile)
    if profile.settings.get("parquet_prompt") and sample.meta.get(PARQUET_PROMPT_KEY) is not None:
        return _parquet_conversation(sample, profile)
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
    if parts and parts[-1]["type"] == "text" and not profile.verbatim:
        parts[-1]["text"] = parts[-1]["text"].rstrip("\n")
    conv = Conversation()
    conv.messages.append({"role": "system", "content": system_prompt(profile, coordinates)})
    conv.add_user(parts, images)
    return conv


# ----------------------------------------------------------------------------- the evaluation parquet's prompt

PARQUET_PROMPT_KEY = "parquet_prompt"
IMAGE_PLACEHOLDER = "<image>"
# The official driver's view of the candidate block: from "Candidates:" up to "Guidelines:" (first match).
_CANDIDATE_BLOCK = re.compile(r"(Candidates:.*?)Guidelines:", re.S)


def parquet_window_prompt(
    user_text: str,
    candidates: list[Candidate],
    mode: str = "aligned",
    window_size: int = 20,
    where: str = "parquet prompt",
) -> str:
    """The parquet user text with its candidate block rebuilt for ``candidates`` (one window).

    The public release's sliding-window driver replaces the text from ``Candidates:`` up to
    ``Guidelines:`` with ``Candidates:``, ``(k) `` parts and a blank line (every occurrence of the old
    block is replaced). It writes each candidate's text as its parquet hit stores it; here a candidate's
    text is written the way the parquet's prompts write texts, with LamRA's cleaning (idempotent on a text
    that is already clean). Two ways of writing the parts:

    * ``aligned`` (default): ``(k) `` + ``<image>`` if candidate k has an image + candidate k's text, for
      the K candidates of the window: each number sits next to its own image and text, as in the
      training prompts;
    * ``upstream``: the driver's own rule: ``window_size`` parts whatever K; every part gets ``<image>``
      when any candidate of the window has an image; the k-th part shows the k-th non-empty text. When
      some candidates lack an image or a text, numbers, images and texts drift apart (and the images no
      longer match the placeholders, which this function cannot repair: the caller checks the count).
    """
    m = _CANDIDATE_BLOCK.search(user_text)
    if not m:
        raise ProfileError(f"{where}: the user text has no 'Candidates: ... Guidelines:' block to rebuild")
    if mode == "aligned":
        parts = [
            f"({i}) " + (IMAGE_PLACEHOLDER if c.image else "") + lamra_text(c.text)
            for i, c in enumerate(candidates, 1)
        ]
    elif mode == "upstream":
        texts = [t for t in (lamra_text(c.text) for c in candidates) if t]
        mark = IMAGE_PLACEHOLDER if any(c.image for c in candidates) else ""
        parts = [f"({i + 1}) {mark}" + (texts[i] if i < len(texts) else "") for i in range(window_size)]
    else:
        raise ProfileError(f"{where}: parquet prompt mode must be 'aligned' or 'upstream', got {mode!r}")
    return user_text.replace(m.group(1), "Candidates:" + "".join(parts) + "\n\n")


def _parquet_conversation(sample: Sample, profile: Profile) -> Conversation:
    where = f"sample {sample.id!r}: meta['{PARQUET_PROMPT_KEY}']"
    prompt = sample.meta[PARQUET_PROMPT_KEY]
    ok = (
        isinstance(prompt, list)
        and [m.get("role") if isinstance(m, dict) else None for m in prompt] == ["system", "user"]
        and all(isinstance(m.get("content"), str) for m in prompt)
    )
    if not ok:
        raise ProfileError(f"{where}: expected [system, user] messages with string contents")
    system, user = prompt[0]["content"], prompt[1]["content"]
    text = parquet_window_prompt(
        user,
        sample.candidates,
        profile.settings.get("parquet_prompt", "aligned"),
        int(profile.settings.get("parquet_window_size", 20)),
        where,
    )
    # Images in placeholder order: the query's (before the candidate block), then the candidates'.
    n_query = text.split("Candidates:", 1)[0].count(IMAGE_PLACEHOLDER)
    if n_query != len(sample.query.images):
        raise ProfileError(
            f"{where}: the query part has {n_query} {IMAGE_PLACEHOLDER} placeholder(s) but the sample's query "
            f"has {len(sample.query.images)} image(s)"
        )
    images: list[ImageLike] = list(sample.query.images) + [c.image for c in sample.candidates if c.image]
    pieces = text.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != len(images):
        raise ProfileError(
            f"{where}: the rebuilt prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders for "
            f"{len(images)} images (the 'upstream' candidate block misplaces images when some candidates "
            "have none; use the 'aligned' one)"
        )
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    conv = Conversation()
    conv.messages.append({"role": "system", "content": system})
    conv.add_user(parts, images)
    return conv


def image_size(x: ImageLike) -> str:
    """``"WxH"`` of an image (a file's header is read, not its pixels)."""
    if isinstance(x, Image.Image):
        w, h = x.size
    else:
        with Image.open(x) as im:
            w, h = im.size
    return f"{w}x{h}"


def observation_message(
    profile: Profile,
    tool: str | None,
    indices: list[int],
    images: list[ImageLike],
    error: str | None = None,
    valid: bool | None = None,
) -> tuple[list[dict[str, Any]], list[ImageLike]]:
    """The user-turn parts (and images) that show a tool result or a tool error to the model.

    ``valid`` defaults to "no error"; an invalid call may carry an empty error text (the official tool
    server says nothing about a call it cannot read). The template's ``tool_text()`` is the tool record's
    own sentence about the result (:meth:`Profile.tool_text`).
    """
    variables: dict[str, Any] = {
        "tool": tool or "",
        "indices": indices,
        "images": images,
        "error": error or "",
        "valid": (error is None) if valid is None else valid,
        "image_size": image_size,
    }
    variables["tool_text"] = lambda: profile.tool_text(tool, variables)
    return _render_parts(profile.templates["observation"], variables)
