"""What travels to an OpenAI-compatible chat server and back: the request's messages, its JSON bytes, and
the completion read from the answer.

OpenAI's API drops the stop string that ended a completion, but the parser needs the closing tag. When
the server did not keep it (a vLLM server is asked to: ``include_stop_str_in_output``), it is put back,
using the server's ``stop_reason`` (vLLM) or ``matched_stop`` (SGLang) when present and else the closing
tag that the text leaves open. Reasoning or tool calls a server-side parser split off the text are put
back in place.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from vretrver.engines.base import Completion, GenerationConfig, cut_at_stop
from vretrver.engines.render import count_image_parts
from vretrver.protocol import Conversation, ImageLike


class FatalResponse(Exception):
    """The server answered, and retrying would not help (an HTTP error, an answer without choices)."""


def chat_messages(conv: Conversation, data_url: Callable[[ImageLike], str]) -> list[dict[str, Any]]:
    """The conversation in the OpenAI chat shape: image parts become ``data_url(image)``, in order."""
    n = count_image_parts(conv)
    if n != len(conv.images):
        raise ValueError(f"conversation has {n} image parts but {len(conv.images)} images")
    images = iter(enumerate(conv.images))
    out = []
    for m in conv.messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        parts = []
        for p in content:
            if p.get("type") == "image":
                i, x = next(images)
                try:
                    url = data_url(x)
                except (OSError, ValueError) as e:
                    raise ValueError(f"image {i} ({str(x)[:200]}) could not be read: {e}") from e
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif p.get("type") == "text":
                parts.append({"type": "text", "text": p["text"]})
        out.append({"role": m["role"], "content": parts})
    return out


def completion_from(data: dict[str, Any], gen: GenerationConfig) -> Completion:
    """The completion of a chat answer, its stop string in place; :class:`FatalResponse` without one."""
    if "choices" not in data or not data["choices"]:
        raise FatalResponse(f"response without choices: {json.dumps(data)[:300]}")
    choice = data["choices"][0]
    msg = choice.get("message") or {}
    text = message_text(msg)
    finish = choice.get("finish_reason")
    if finish == "stop" and gen.stop and not any(text.endswith(s) for s in gen.stop):
        text += stripped_stop(text, gen.stop, choice)
    text, _ = cut_at_stop(text, gen.stop)
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        finish_reason=finish,
        n_prompt_tokens=usage.get("prompt_tokens"),
        n_completion_tokens=usage.get("completion_tokens"),
    )


def encode_body(body: dict[str, Any]) -> bytes:
    """The request as JSON bytes; non-ASCII text as escapes, so even a lone surrogate can travel."""
    return json.dumps(body).encode("ascii")


def message_text(msg: dict[str, Any]) -> str:
    """The assistant text, with anything a server-side parser split off put back in place."""
    text = msg.get("content") or ""
    if isinstance(text, list):  # some servers answer with content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning and "<think>" not in text:
        text = f"<think>\n{reasoning.strip()}\n</think>\n\n{text.lstrip()}"
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        with contextlib.suppress(json.JSONDecodeError):  # keep a malformed string as it came
            args = json.loads(args) if isinstance(args, str) else args
        payload = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
        text += f"<tool_call>\n{payload}\n</tool_call>"
    return text


def stripped_stop(text: str, stop: list[str], choice: dict[str, Any]) -> str:
    """The stop string a server removed from the end of ``text`` ('' if it cannot be known)."""
    for key in ("stop_reason", "matched_stop"):  # vLLM, SGLang
        if key not in choice:
            continue
        # The stop string that matched; None or a token id: the model ended its turn, nothing was cut.
        reason = choice[key]
        return reason if isinstance(reason, str) and reason in stop else ""
    # No stop_reason (plain OpenAI): a closing tag whose opening tag the text leaves open was the stop.
    best, where = "", -1
    for s in stop:
        if s.startswith("</") and s.endswith(">"):
            opener = "<" + s[2:]
            i = text.rfind(opener)
            if i > where and text.find(s, i) < 0:
                best, where = s, i
    return best
