"""The parser under hostile input: same decisions as the regular-expression layout it replaced, strict
JSON for tool calls, strings that UTF-8 can always write, and time linear in the length of a turn."""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import ASTRONAUT, CHELSEA
from PIL import Image

from vretrver.episode import Episode
from vretrver.protocol import parse_turn
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import ToolConfig, select_images

# ------------------------------------------------------------------ the layout, as regular expressions

# The strict layout as a regular expression with tempered dots (quadratic on some inputs, fine on short
# ones): the reference the parser's str.find version must agree with, decision for decision.
REF_STRICT = re.compile(
    r"\s*<think>(?:(?!</?think>).)*</think>\s*"
    r"(?:<tool_call>(?:(?!</?tool_call>|</?answer>).)*</tool_call>"
    r"|<answer>(?:(?!</?answer>|</?tool_call>).)*</answer>)\s*",
    re.S,
)
REF_THINK = re.compile(r"<think>(.*?)</think>", re.S)
REF_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
REF_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)


def reference(text: str) -> dict:
    """Where the action is, as the regular expressions find it."""
    think = REF_THINK.search(text)
    lo, hi = (think.end() if think else 0), len(text)
    call, ans = REF_CALL.search(text, lo, hi), REF_ANSWER.search(text, lo, hi)
    if think and not call and not ans:
        lo, hi = 0, think.start()
        call, ans = REF_CALL.search(text, lo, hi), REF_ANSWER.search(text, lo, hi)
    first = call if call and (not ans or call.start() < ans.start()) else ans
    kind = "malformed" if first is None else ("tool_call" if first is call else "answer")
    body = first.group(1) if first else ""
    return {
        "kind": kind,
        "think": think.group(1).strip() if think else None,
        "span": first.span(1) if first else None,
        "closed": bool(first) and first.group(0).endswith("</tool_call>" if first is call else "</answer>"),
        "several calls": len(REF_CALL.findall(text, lo, hi)) > 1,
        "several answers": len(REF_ANSWER.findall(text, lo, hi)) > 1,
        "tagged": bool(REF_STRICT.fullmatch(text)) and "<think>" not in body and "</think>" not in body,
    }


PIECES = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<think",
    "</answer",
    " ",
    "\n",
    "\t",
    "\u3000",  # ideographic space: white space to both
    "\x85",
    "\x1c",
    "\u200b",  # zero-width space: not white space
    "x",
    "[1, 2]",
    "7",
    '{"name": "crop_image", "arguments": {"target_image": 1}}',
    "```",
    "```json",
    "<",
    ">",
    "/",
]


def test_same_decisions_as_the_regular_expressions_on_random_turns():
    rng = random.Random(7)
    differ = []
    for _ in range(30_000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))
        p, ref = parse_turn(text), reference(text)
        got = {
            "kind": p.kind,
            "think": p.think,
            "span": p.span,
            "closed": p.closed,
            "several calls": "more than one tool call" in p.problems,
            "several answers": "more than one answer" in p.problems,
            "tagged": p.well_tagged,
        }
        if got != ref:
            differ.append((text, got, ref))
    assert not differ, differ[:3]


# ------------------------------------------------------------------ strict JSON and stray tags


def call_turn(body: str) -> str:
    return f"<think>zoom in</think>\n<tool_call>\n{body}\n</tool_call>"


@pytest.mark.parametrize(
    "body, reason",
    [
        ('{"name": "crop_image", "arguments": {"bbox_2d": [NaN, 0, 1, 1], "target_image": 1}}', "NaN"),
        (
            '{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, Infinity, 1], "target_image": 1}}',
            "Infinity",
        ),
        (
            '{"name": "crop_image", "arguments": {"bbox_2d": [-Infinity, 0, 1, 1], "target_image": 1}}',
            "Infinity",
        ),
        ('{"name": "crop_image", "arguments": {"bbox_2d": [1e400, 0, 1, 1], "target_image": 1}}', "1e400"),
        (
            '{"name": "select_images", "arguments": {"target_images": [1], "target_images": [2]}}',
            "duplicate key",
        ),
        ('{"name": "select_images", "name": "crop_image", "arguments": {}}', "duplicate key"),
        ('{"name": "select_images", "arguments": "{\\"target_images\\": [NaN]}"}', "NaN"),
    ],
)
def test_tool_calls_are_strict_json(body, reason):
    p = parse_turn(call_turn(body))
    assert p.kind == "tool_call" and p.tool_call.arguments is None
    assert "not valid JSON" in p.tool_call.error and reason in p.tool_call.error
    assert p.well_tagged and not p.well_formed  # an invalid call, not a tag failure


def test_strict_json_errors_reach_the_observation(tmp_path):
    ep = Episode(_sample(tmp_path))
    ep.step(call_turn('{"name": "select_images", "arguments": {"target_images": [1], "target_images": [2]}}'))
    assert ep.n_invalid_calls == 1 and ep.n_valid_calls == 0
    assert "duplicate key 'target_images'" in ep.turns[-1].text


@pytest.mark.parametrize("tag", ["<think>", "</think>"])
def test_think_tags_inside_the_action_are_not_well_tagged(tag):
    args = {"target_images": [1], "note": tag}
    p = parse_turn(call_turn(json.dumps({"name": "select_images", "arguments": args})))
    assert p.kind == "tool_call" and p.tool_call.arguments == args  # the call still runs
    assert not p.well_tagged and not p.well_formed
    assert any("think tag inside" in x for x in p.problems)
    p = parse_turn(f"<think>t</think><answer>[1, 2]{tag}</answer>")
    assert p.kind == "answer" and not p.well_tagged


def test_a_sloppy_call_is_well_tagged_but_not_well_formed():
    p = parse_turn(call_turn('```json\n{"name": "select_images", "arguments": {"target_images": [1]}}\n```'))
    assert p.well_tagged and not p.well_formed and p.tool_call.arguments == {"target_images": [1]}


@pytest.mark.parametrize("body", ["[ ]", "[]", "[\n\t]", "[,]", "[1,]"])
def test_empty_brackets_are_not_an_integer_list(body):
    p = parse_turn(f"<think>t</think><answer>{body}</answer>")
    assert p.kind == "answer" and not p.answer_is_int_list and not p.well_formed and p.well_tagged


@pytest.mark.parametrize(
    "body, numbers",
    [
        ("[\uff13, 1, 2]", [1, 2]),  # full-width 3
        ("[\u0663, \u0661]", []),  # Arabic-Indic 3, 1
        ("[\u06f3, 2]", [2]),  # extended Arabic-Indic 3
        ("[\u0969, 2]", [2]),  # Devanagari 3
        ("[3, 1, 2]", [3, 1, 2]),
    ],
)
def test_only_ascii_digits_are_digits(body, numbers):
    p = parse_turn(f"<think>t</think><answer>{body}</answer>")
    assert p.answer == numbers
    assert p.answer_is_int_list is (body == "[3, 1, 2]")


# ------------------------------------------------------------------ strings UTF-8 can write


def writable(obj) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_lone_surrogates_become_replacement_characters():
    body = '{"name": "select_images", "arguments": {"target_images": [1], "note\\udc00": "a\\ud800b"}}'
    p = parse_turn(call_turn(body))
    assert p.tool_call.arguments == {"target_images": [1], "note\ufffd": "a\ufffdb"}
    assert "lone surrogates replaced with U+FFFD" in p.problems and not p.well_formed
    p = parse_turn(call_turn('{"name": "\\ud83d", "arguments": {}}'))
    assert p.tool_call.name == "\ufffd"
    p = parse_turn(call_turn('{"name": "select_images", "arguments": {"note": "\\ud83d\\ude00"}}'))
    assert p.tool_call.arguments == {"note": "\U0001f600"} and p.well_formed  # a proper pair is fine
    p = parse_turn("<think>a\ud800</think><answer>[1, \udfff 2]</answer>")  # in the text itself
    assert p.think == "a\ufffd" and p.answer_text == "[1, \ufffd 2]" and writable(asdict(p))


def test_a_surrogate_in_a_tool_call_leaves_the_trajectory_writable(tmp_path):
    ep = Episode(_sample(tmp_path))
    ep.step(call_turn('{"name": "select_images", "arguments": {"target_images": [1], "x": "\\ud800"}}'))
    ep.step(call_turn('{"name": "zoom\\udfff", "arguments": {}}'))  # its name shows up in the error
    ep.step("<think>done</think><answer>[2, 1]</answer>")
    json.dumps(ep.to_record(), ensure_ascii=False).encode("utf-8")


# ------------------------------------------------------------------ property: hostile turns and arguments

K = 6
TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>", "```json", "```"]
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=())  # surrogates too
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()  # NaN and infinities too: json.dumps writes them as NaN / Infinity
    | st.text(ANY_CHAR, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(ANY_CHAR, max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)
ARGUMENTS = st.one_of(
    st.fixed_dictionaries({"target_images": st.lists(st.integers(-2, K + 2), max_size=6)}),
    st.fixed_dictionaries(
        {
            "bbox_2d": st.lists(st.integers(-10, 80) | st.floats(-1, 2), min_size=4, max_size=4),
            "target_image": st.integers(-1, K + 1),
        }
    ),
    st.dictionaries(st.text(ANY_CHAR, max_size=8), JSON_VALUES, max_size=4),
)


@st.composite
def hostile_call(draw):
    name = draw(st.sampled_from(["select_images", "crop_image", "zoom", ""]) | st.text(ANY_CHAR, max_size=6))
    call = json.dumps({"name": name, "arguments": draw(ARGUMENTS)})  # ASCII: surrogates as \\ud800 escapes
    if draw(st.booleans()):
        i = draw(st.integers(0, len(call)))
        call = call[:i] + draw(st.sampled_from(TAGS) | st.text(ANY_CHAR, max_size=3)) + call[i:]
    return call_turn(call)


@st.composite
def hostile_answer(draw):
    items = draw(
        st.lists(st.integers(-3, K + 3) | st.sampled_from(["\uff13", "\u0663", "two", "", " "]), max_size=9)
    )
    body = ", ".join(map(str, items))
    body = draw(st.sampled_from([f"[{body}]", body, f"[{body}", f"({body})"]))
    closing = draw(st.sampled_from(["</answer>", "", "</answer> trailing"]))
    return f"<think>{draw(st.text(max_size=10))}</think><answer>{body}{closing}"


TURNS = st.one_of(
    hostile_call(),
    hostile_answer(),
    st.text(ANY_CHAR, max_size=60),
    st.lists(st.sampled_from(TAGS) | st.text(ANY_CHAR, max_size=4), max_size=12).map("".join),
)


def _sample(folder) -> Sample:
    paths = []
    for name, src in (("q", ASTRONAUT), ("c", CHELSEA)):
        path = folder / f"{name}.png"
        if not path.exists():
            with Image.open(src) as im:
                im.convert("RGB").resize((64, 48)).save(path)
        paths.append(str(path))
    cands = [Candidate(f"c{i}", f"candidate {i}", paths[1] if i % 2 else None) for i in range(1, K + 1)]
    return Sample("fuzz:1", Query("a photo", [paths[0]], "Find it."), cands, positives=["c2"])


@settings(max_examples=3000, deadline=None, database=None)
@given(TURNS)
def test_any_turn_parses_into_writable_strings(text):
    p = parse_turn(text)
    assert p.kind in ("tool_call", "answer", "malformed")
    assert writable(asdict(p))
    if p.well_formed:
        assert p.well_tagged and p.problems == []


@settings(max_examples=250, deadline=None, database=None)
@given(st.lists(TURNS, min_size=1, max_size=4))
def test_any_trajectory_ends_in_a_permutation_and_a_writable_record(tmp_path_factory, turns):
    ep = Episode(_sample(tmp_path_factory.getbasetemp()), max_tool_calls=2)
    for text in turns:
        if ep.done:
            break
        ep.step(text)
    if not ep.done:
        ep.fail("the model stopped")
    assert sorted(ep.ranking) == list(range(1, K + 1))
    record = ep.to_record()
    if all(writable(t) for t in turns):  # the model's own text aside, everything the harness adds is
        assert writable(record)
    for row in record["turns"]:
        assert writable(row.get("parsed")) and writable(row.get("tool"))


# ------------------------------------------------------------------ time linear in the length of a turn

PATHOLOGICAL = {
    "unclosed think, repeated": lambda n: "<think>" * (n // 7) + "x",
    "closing think, repeated": lambda n: "</think>" * (n // 8),
    "open tool calls": lambda n: "<think>a</think>" + "<tool_call>" * (n // 11),
    "open answers": lambda n: "<think>a</think>" + "<answer>" * (n // 8),
    "closed empty calls": lambda n: "<think>a</think>" + "<tool_call></tool_call>" * (n // 23),
    "white space in a fence": lambda n: "<think>a</think><tool_call>```" + " " * n + "x</tool_call>",
    "white space in a list": lambda n: "<think>a</think><answer>[1" + " " * n + "x</answer>",
    "long list": lambda n: "<think>a</think><answer>[" + "1, " * (n // 3) + "1]</answer>",
    "digits": lambda n: "<think>a</think><answer>" + "1" * n + "x</answer>",
    "nested brackets": lambda n: "<think>a</think><tool_call>" + "[" * (n // 2) + "</tool_call>",
    "think inside think": lambda n: "<think>" + "<think>x" * (n // 8) + "</think><answer>[1]</answer>",
}


def _seconds(fn, arg, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_parse_time_is_linear_in_the_turn_length(name):
    # 8x the text may take about 8x the time; a quadratic parser takes 64x (the old one: minutes).
    make = PATHOLOGICAL[name]
    small, large = make(20_000), make(160_000)
    t_small, t_large = _seconds(parse_turn, small), _seconds(parse_turn, large)
    assert t_large < 24 * t_small + 0.02, (t_small, t_large)


def test_select_images_time_is_linear_in_the_index_count():
    images = [None] * (K + 1)
    cfg = ToolConfig()
    t_small = _seconds(lambda n: select_images({"target_images": list(range(n))}, images, cfg), 5_000)
    t_large = _seconds(lambda n: select_images({"target_images": list(range(n))}, images, cfg), 40_000)
    assert t_large < 24 * t_small + 0.02, (t_small, t_large)
    r = select_images({"target_images": list(range(40_000))}, images, cfg)
    assert not r.valid and "at most 4 images" in r.error
