"""Parse one assistant turn into a tool call, a final answer, or a malformed turn with a reason.

Two levels, on purpose:

* the harness is tolerant: white space around tags, a JSON code fence inside ``<tool_call>``, text after
  the closing tag, arguments given as a JSON string, an answer written without brackets -- the turn is
  still understood, so one sloppy token does not waste an evaluation query;
* ``well_formed`` is strict, because the reward needs it: exactly ``<think>...</think>`` followed by one
  ``<tool_call>...</tool_call>`` or one ``<answer>...</answer>`` and nothing else.
  ``answer_is_int_list`` is the reward's "the final answer is a list of integers".

The parser never raises on any string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

THINK = re.compile(r"<think>(.*?)</think>", re.S)
TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
STRICT = re.compile(
    r"\s*<think>(?:(?!</?think>).)*</think>\s*"
    r"(?:<tool_call>(?:(?!</?tool_call>|</?answer>).)*</tool_call>|<answer>(?:(?!</?answer>|</?tool_call>).)*</answer>)\s*",
    re.S,
)
FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
INT_LIST = re.compile(r"\[\s*(?:[+-]?\d+\s*(?:,\s*[+-]?\d+\s*)*)?\]")
INTEGER = re.compile(r"(?<![\w.])[+-]?\d+(?![\w.])")


@dataclass
class ToolCall:
    name: str | None
    arguments: dict[str, Any] | None
    raw: str
    error: str | None = None  # why the call cannot be executed (it still counts as a tool call)


@dataclass
class ParsedTurn:
    kind: str  # "tool_call" | "answer" | "malformed"
    think: str | None = None
    tool_call: ToolCall | None = None
    answer: list[int] | None = None  # candidate numbers as written (not yet normalised)
    answer_text: str | None = None
    answer_is_int_list: bool = False
    well_formed: bool = False
    reason: str | None = None  # for malformed turns: why nothing could be used
    problems: list[str] = field(default_factory=list)  # what keeps the turn from being well formed
    # Where the action's body (inside <tool_call> or <answer>) lies in the text, as (start, end).
    span: tuple[int, int] | None = None


def _parse_call(body: str) -> tuple[ToolCall, list[str]]:
    """The call, plus the tolerated slips that keep it from being well formed."""
    raw = body.strip()
    text = raw
    slips: list[str] = []
    m = FENCE.match(text)
    if m:
        text = m.group(1).strip()
        slips.append("the tool call is wrapped in a code fence")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        # A trailing brace or text after the object is a common slip: take the first JSON object.
        try:
            obj, _ = json.JSONDecoder().raw_decode(text)
        except (json.JSONDecodeError, RecursionError, ValueError):
            return ToolCall(None, None, raw, "the tool call is not valid JSON"), slips
        slips.append("text after the tool call's JSON object")
    if not isinstance(obj, dict):
        err = 'the tool call must be a JSON object {"name": ..., "arguments": {...}}'
        return ToolCall(None, None, raw, err), slips
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(None, None, raw, "the tool call has no function name"), slips
    if "arguments" not in obj and "parameters" in obj:
        slips.append("'parameters' instead of 'arguments'")
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError, ValueError):
            return ToolCall(name, None, raw, "the tool call arguments are not valid JSON"), slips
        slips.append("the tool call arguments are a JSON string, not an object")
    if not isinstance(args, dict):
        return ToolCall(name, None, raw, "the tool call arguments must be a JSON object"), slips
    return ToolCall(name, args, raw), slips


def _parse_answer(body: str) -> tuple[list[int], bool]:
    text = body.strip()
    strict = bool(INT_LIST.fullmatch(text)) and text != "[]"
    numbers = []
    for tok in INTEGER.findall(text):
        try:
            numbers.append(int(tok))
        except ValueError:  # pragma: no cover - the regex only matches digits
            continue
    return numbers, strict


def parse_turn(text: str) -> ParsedTurn:
    """Parse one assistant turn (the model's text, stop string included)."""
    if not isinstance(text, str):
        return ParsedTurn(kind="malformed", reason="the turn is not text")
    problems: list[str] = []
    think_m = THINK.search(text)
    think = think_m.group(1).strip() if think_m else None
    if think_m is None:
        problems.append("missing <think>...</think>")
    well_formed = bool(STRICT.fullmatch(text))

    # The action follows the reasoning: tags the reasoning merely mentions are not the action.
    lo, hi = (think_m.end() if think_m else 0), len(text)
    call_m = TOOL_CALL.search(text, lo, hi)
    ans_m = ANSWER.search(text, lo, hi)
    if think_m and not call_m and not ans_m:  # an action written before the reasoning
        lo, hi = 0, think_m.start()
        call_m = TOOL_CALL.search(text, lo, hi)
        ans_m = ANSWER.search(text, lo, hi)
    # The first action in the text wins; stop strings normally end the turn right after it.
    first = None
    if call_m and (not ans_m or call_m.start() < ans_m.start()):
        first = "tool_call"
    elif ans_m:
        first = "answer"
    if call_m and ans_m:
        problems.append("both a tool call and an answer")
    if len(TOOL_CALL.findall(text, lo, hi)) > 1:
        problems.append("more than one tool call")
    if len(ANSWER.findall(text, lo, hi)) > 1:
        problems.append("more than one answer")

    if first is None:
        reason = "no <tool_call> or <answer> in the turn"
        return ParsedTurn(kind="malformed", think=think, reason=reason, problems=problems + [reason])

    m = call_m if first == "tool_call" else ans_m
    closing = "</tool_call>" if first == "tool_call" else "</answer>"
    if not m.group(0).endswith(closing):
        problems.append(f"unclosed {closing.replace('/', '')}")
    elif text[m.end() :].strip():
        problems.append(f"text after {closing}")

    if first == "tool_call":
        call, slips = _parse_call(m.group(1))
        problems.extend(slips)
        if call.error:
            problems.append(call.error)
        _explain(problems, well_formed)
        return ParsedTurn(
            kind="tool_call",
            think=think,
            tool_call=call,
            well_formed=well_formed and not problems,
            problems=problems,
            span=m.span(1),
        )
    numbers, strict = _parse_answer(m.group(1))
    if not strict:
        problems.append("the answer is not a list of integers")
    _explain(problems, well_formed)
    return ParsedTurn(
        kind="answer",
        think=think,
        answer=numbers,
        answer_text=m.group(1).strip(),
        answer_is_int_list=strict,
        well_formed=well_formed and not problems,
        problems=problems,
        span=m.span(1),
    )


def _explain(problems: list[str], well_formed: bool) -> None:
    # Every turn that is not well formed says why (e.g. text between </think> and the action).
    if not well_formed and not problems:
        problems.append("the turn is not <think>...</think> followed by exactly one <tool_call> or <answer>")


def normalize_ranking(answer: list[int] | None, k: int, prior: list[int] | None = None) -> list[int]:
    """A full permutation of 1..k from a model answer.

    Duplicates and out-of-range numbers are dropped; candidates the answer omits follow the listed
    ones in their prior order (``prior``, default 1..k).
    """
    prior = list(range(1, k + 1)) if prior is None else prior
    seen: set[int] = set()
    out: list[int] = []
    for n in answer or []:
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= k and n not in seen:
            seen.add(n)
            out.append(n)
    out.extend(n for n in prior if n not in seen)
    return out
