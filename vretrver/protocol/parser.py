"""Parse one assistant turn into a tool call, a final answer, or a malformed turn with a reason.

Two levels, on purpose:

* the harness is tolerant: white space around tags, a JSON code fence inside ``<tool_call>``, text after
  the closing tag, arguments given as a JSON string, an answer written without brackets -- the turn is
  still understood, so one sloppy token does not waste an evaluation query;
* ``well_tagged`` and ``well_formed`` are strict, because the reward and the SFT filter need them.
  ``well_tagged``: exactly ``<think>...</think>`` followed by one ``<tool_call>...</tool_call>`` or one
  ``<answer>...</answer>``, white space around them and nothing else (the reward's format condition).
  ``well_formed``: well tagged and nothing else wrong either (strict JSON call, integer-list answer).
  ``answer_is_int_list`` is the reward's "the final answer is a non-empty list of integers".

Digits are ASCII 0-9 only. Tags are found with ``str.find`` rather than regular expressions, so the time
is linear in the length of the turn whatever the text. The parser never raises on any string, and the
strings it returns are always UTF-8 encodable (a lone surrogate becomes U+FFFD, noted in ``problems``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# A non-empty bracketed list of ASCII integers; every part of this pattern is unambiguous (linear time).
INT_LIST = re.compile(r"\[\s*[+-]?[0-9]+\s*(?:,\s*[+-]?[0-9]+\s*)*\]")
INTEGER = re.compile(r"(?<![\w.])[+-]?[0-9]+(?![\w.])")
WHITE = re.compile(r"\s*")
SURROGATE = re.compile("[\ud800-\udfff]")
FENCE = "```"
SURROGATE_NOTE = "lone surrogates replaced with U+FFFD"


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
    well_tagged: bool = False  # <think>...</think> then exactly one action, and nothing else
    closed: bool = False  # the action's closing tag is present (an unclosed answer is a truncated one)


# --------------------------------------------------------------------------- finding tags


@dataclass(frozen=True)
class _Span:
    start: int  # the opening tag
    body: tuple[int, int]
    end: int  # after the closing tag, or the end of the searched region when unclosed
    closed: bool


def _tag(text: str, open_: str, close: str, lo: int, hi: int) -> _Span | None:
    """The first ``open_ ... close`` in text[lo:hi]; unclosed, it runs to ``hi``."""
    a = text.find(open_, lo, hi)
    if a < 0:
        return None
    b = a + len(open_)
    c = text.find(close, b, hi)
    if c < 0:
        return _Span(a, (b, hi), hi, False)
    return _Span(a, (b, c), c + len(close), True)


def _count(text: str, open_: str, close: str, lo: int, hi: int) -> int:
    """How many non-overlapping ``open_ ... close`` (or unclosed) runs text[lo:hi] holds."""
    n, pos = 0, lo
    while (s := _tag(text, open_, close, pos, hi)) is not None:
        n += 1
        if not s.closed:
            break
        pos = s.end
    return n


def _think(text: str) -> _Span | None:
    """The first closed ``<think>...</think>``: if the first ``<think>`` has no closing tag after it, no
    later one has either."""
    s = _tag(text, THINK_OPEN, THINK_CLOSE, 0, len(text))
    return s if s is not None and s.closed else None


def _skip_white(text: str, pos: int) -> int:
    return WHITE.match(text, pos).end()


def _first_tag_is(text: str, start: int, wanted: str, others: tuple[str, ...]) -> int:
    """Where ``wanted`` first occurs after ``start`` if none of ``others`` occurs before it; else -1.

    Tags only hold ``<`` as their first character, so one tag never overlaps the start of another.
    """
    end = text.find(wanted, start)
    if end < 0 or any(text.find(t, start, end) >= 0 for t in others):
        return -1
    return end


def _strict_layout(text: str) -> bool:
    """``\\s* <think>B</think> \\s* (<tool_call>C</tool_call> | <answer>A</answer>) \\s*`` and nothing else,
    where B holds no think tag, C no tool-call or answer tag, A no answer or tool-call tag."""
    i = _skip_white(text, 0)
    if not text.startswith(THINK_OPEN, i):
        return False
    close = _first_tag_is(text, i + len(THINK_OPEN), THINK_CLOSE, (THINK_OPEN,))
    if close < 0:
        return False
    j = _skip_white(text, close + len(THINK_CLOSE))
    if text.startswith(CALL_OPEN, j):
        body, closing, others = j + len(CALL_OPEN), CALL_CLOSE, (CALL_OPEN, ANSWER_OPEN, ANSWER_CLOSE)
    elif text.startswith(ANSWER_OPEN, j):
        body, closing, others = j + len(ANSWER_OPEN), ANSWER_CLOSE, (ANSWER_OPEN, CALL_OPEN, CALL_CLOSE)
    else:
        return False
    end = _first_tag_is(text, body, closing, others)
    return end >= 0 and _skip_white(text, end + len(closing)) == len(text)


# --------------------------------------------------------------------------- strings UTF-8 can write


class _Scrub:
    """Replaces lone surrogates (unencodable in UTF-8) with U+FFFD and remembers whether it did."""

    def __init__(self) -> None:
        self.changed = False

    def text(self, s: str) -> str:
        out = SURROGATE.sub("\ufffd", s)
        if out != s:
            self.changed = True
        return out

    def json(self, value: Any) -> Any:
        """The same value with every string (keys too) scrubbed; iterative, as nesting depth is unbounded."""
        if isinstance(value, str):
            return self.text(value)
        stack = [value]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                for i, v in enumerate(node):
                    if isinstance(v, str):
                        node[i] = self.text(v)
                    elif isinstance(v, (list, dict)):
                        stack.append(v)
            elif isinstance(node, dict):
                items = list(node.items())
                node.clear()
                for k, v in items:
                    if isinstance(v, str):
                        v = self.text(v)
                    elif isinstance(v, (list, dict)):
                        stack.append(v)
                    node[self.text(k) if isinstance(k, str) else k] = v
        return value


# --------------------------------------------------------------------------- tool calls


class _NotStrictJSON(ValueError):
    """JSON that Python's reader accepts but the JSON standard (or a tool) does not."""


def _no_constant(name: str) -> Any:
    raise _NotStrictJSON(f"{name} is not a JSON number")


def _finite_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise _NotStrictJSON(f"the number {s[:40]} is out of range")
    return x


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _NotStrictJSON(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


_STRICT_JSON = json.JSONDecoder(
    parse_float=_finite_float, parse_constant=_no_constant, object_pairs_hook=_unique_keys
)


def _loads(text: str, what: str) -> tuple[Any, str | None, bool]:
    """(value, error, trailing text ignored). Strict: no NaN / Infinity, no overflowing number, no
    duplicate key; text after the first JSON value is tolerated (a common slip) but reported."""
    try:
        return _STRICT_JSON.decode(text), None, False
    except _NotStrictJSON as e:
        return None, f"{what} not valid JSON: {e}", False
    except (ValueError, RecursionError):
        pass
    try:
        return _STRICT_JSON.raw_decode(text)[0], None, True
    except _NotStrictJSON as e:
        return None, f"{what} not valid JSON: {e}", False
    except (ValueError, RecursionError):
        return None, f"{what} not valid JSON", False


def _unfence(text: str) -> str | None:
    """The inside of a ```json ... ``` code fence, or None when the text is not fenced."""
    if len(text) < 2 * len(FENCE) or not (text.startswith(FENCE) and text.endswith(FENCE)):
        return None
    inner = text[len(FENCE) : -len(FENCE)]
    return inner.removeprefix("json").strip()


def _parse_call(body: str, scrub: _Scrub) -> tuple[ToolCall, list[str]]:
    """The call, plus the tolerated slips that keep it from being well formed."""
    raw = body.strip()
    text = raw
    slips: list[str] = []
    inner = _unfence(text)
    if inner is not None:
        text = inner
        slips.append("the tool call is wrapped in a code fence")
    raw = scrub.text(raw)
    obj, err, trailing = _loads(text, "the tool call is")
    if err:
        return ToolCall(None, None, raw, err), slips
    if trailing:
        slips.append("text after the tool call's JSON object")
    obj = scrub.json(obj)
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
        args, err, trailing = _loads(args, "the tool call arguments are")
        if err or trailing:
            return ToolCall(name, None, raw, err or "the tool call arguments are not valid JSON"), slips
        args = scrub.json(args)
        slips.append("the tool call arguments are a JSON string, not an object")
    if not isinstance(args, dict):
        return ToolCall(name, None, raw, "the tool call arguments must be a JSON object"), slips
    return ToolCall(name, args, raw), slips


# --------------------------------------------------------------------------- answers


def _parse_answer(body: str) -> tuple[list[int], bool]:
    """The integers the answer writes, in order, and whether it is a non-empty bracketed list of them."""
    text = body.strip()
    numbers = []
    for tok in INTEGER.findall(text):
        try:
            numbers.append(int(tok))
        except ValueError:  # beyond Python's digit limit for int(): not a candidate number anyway
            continue
    return numbers, bool(INT_LIST.fullmatch(text))


# --------------------------------------------------------------------------- turns


def parse_turn(text: str) -> ParsedTurn:
    """Parse one assistant turn (the model's text, stop string included)."""
    if not isinstance(text, str):
        return ParsedTurn(kind="malformed", reason="the turn is not text")
    scrub = _Scrub()
    problems: list[str] = []
    think_s = _think(text)
    think = scrub.text(text[think_s.body[0] : think_s.body[1]].strip()) if think_s else None
    if think_s is None:
        problems.append("missing <think>...</think>")
    tagged = _strict_layout(text)

    # The action follows the reasoning: tags the reasoning merely mentions are not the action.
    lo, hi = (think_s.end if think_s else 0), len(text)
    call_s = _tag(text, CALL_OPEN, CALL_CLOSE, lo, hi)
    ans_s = _tag(text, ANSWER_OPEN, ANSWER_CLOSE, lo, hi)
    if think_s and not call_s and not ans_s:  # an action written before the reasoning
        lo, hi = 0, think_s.start
        call_s = _tag(text, CALL_OPEN, CALL_CLOSE, lo, hi)
        ans_s = _tag(text, ANSWER_OPEN, ANSWER_CLOSE, lo, hi)
    # The first action in the text wins; stop strings normally end the turn right after it.
    if call_s and ans_s:
        problems.append("both a tool call and an answer")
    if call_s and _count(text, CALL_OPEN, CALL_CLOSE, lo, hi) > 1:
        problems.append("more than one tool call")
    if ans_s and _count(text, ANSWER_OPEN, ANSWER_CLOSE, lo, hi) > 1:
        problems.append("more than one answer")

    if call_s is None and ans_s is None:
        reason = "no <tool_call> or <answer> in the turn"
        return _finish(ParsedTurn(kind="malformed", think=think, reason=reason), problems + [reason], scrub)

    is_call = call_s is not None and (ans_s is None or call_s.start < ans_s.start)
    s = call_s if is_call else ans_s
    closing = CALL_CLOSE if is_call else ANSWER_CLOSE
    if not s.closed:
        problems.append(f"unclosed {closing.replace('/', '')}")
    elif text[s.end :].strip():
        problems.append(f"text after {closing}")
    body = text[s.body[0] : s.body[1]]
    if THINK_OPEN in body or THINK_CLOSE in body:
        problems.append(f"a think tag inside the {closing.replace('/', '')}")
        tagged = False

    turn = ParsedTurn(kind="tool_call" if is_call else "answer", think=think, span=s.body, closed=s.closed)
    turn.well_tagged = tagged
    if is_call:
        turn.tool_call, slips = _parse_call(body, scrub)
        problems.extend(slips)
        if turn.tool_call.error:
            problems.append(turn.tool_call.error)
    else:
        turn.answer, turn.answer_is_int_list = _parse_answer(body)
        turn.answer_text = scrub.text(body.strip())
        if not turn.answer_is_int_list:
            problems.append("the answer is not a list of integers")
    return _finish(turn, problems, scrub)


def _finish(turn: ParsedTurn, problems: list[str], scrub: _Scrub) -> ParsedTurn:
    if scrub.changed:
        problems.append(SURROGATE_NOTE)
    turn.well_formed = turn.well_tagged and not problems
    # Every turn that is not well formed says why (e.g. text between </think> and the action).
    if not turn.well_formed and not problems:
        problems.append("the turn is not <think>...</think> followed by exactly one <tool_call> or <answer>")
    turn.problems = problems
    return turn


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
