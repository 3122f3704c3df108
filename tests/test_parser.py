"""The parser of assistant turns: paper-style turns, tolerated slips, the strict format, and fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vretrver.protocol import normalize_ranking, parse_turn

SELECT = (
    "<think>The query shows a red double-decker bus in front of a bridge. Candidates 3 and 7 both show red "
    "buses and candidate 0 is the query itself; I need to compare the three at full resolution.</think>\n"
    "<tool_call>\n"
    '{"name": "select_images", "arguments": {"target_images": [0, 3, 7]}}\n'
    "</tool_call>"
)
CROP = (
    "<think>Both buses look alike; the route number on the front should decide. I will zoom into the "
    "front of candidate 3.</think>\n"
    "<tool_call>\n"
    '{"name": "crop_image", "arguments": {"bbox_2d": [112, 40, 388, 264], "target_image": 3}}\n'
    "</tool_call>"
)
ANSWER = (
    "<think>The crop shows route 11 as in the query, so candidate 3 is the match; 7 is a different route, "
    "1 shows the bridge without a bus, the rest are unrelated.</think>\n"
    "<answer>[3, 7, 1, 2, 5, 4, 6, 9, 8, 10]</answer>"
)
EXAMPLES = [SELECT, CROP, ANSWER]


# ------------------------------------------------------------------ paper-style turns


def test_select_call():
    p = parse_turn(SELECT)
    assert p.kind == "tool_call" and p.well_formed and p.problems == []
    assert p.think.startswith("The query shows a red double-decker bus")
    assert p.tool_call.name == "select_images"
    assert p.tool_call.arguments == {"target_images": [0, 3, 7]}
    assert p.tool_call.error is None
    assert p.answer is None and p.reason is None


def test_crop_call():
    p = parse_turn(CROP)
    assert p.kind == "tool_call" and p.well_formed
    assert p.tool_call.name == "crop_image"
    assert p.tool_call.arguments == {"bbox_2d": [112, 40, 388, 264], "target_image": 3}
    assert json.loads(p.tool_call.raw) == {"name": "crop_image", "arguments": p.tool_call.arguments}


def test_answer():
    p = parse_turn(ANSWER)
    assert p.kind == "answer" and p.well_formed and p.answer_is_int_list
    assert p.answer == [3, 7, 1, 2, 5, 4, 6, 9, 8, 10]
    assert p.answer_text == "[3, 7, 1, 2, 5, 4, 6, 9, 8, 10]"
    assert p.tool_call is None


def test_well_tagged_and_closed():
    # well_tagged: the layout only (the reward's format condition); well_formed: nothing else wrong either.
    for text in EXAMPLES:
        p = parse_turn(text)
        assert p.well_tagged and p.closed and p.well_formed
    p = parse_turn("<think>t</think><answer>3, 1, 2</answer>")
    assert p.well_tagged and p.closed and not p.well_formed
    p = parse_turn("<think>t</think><answer>[3, 1, 2]")  # cut off by the length limit
    assert p.kind == "answer" and p.answer == [3, 1, 2] and not p.closed and not p.well_tagged
    p = parse_turn(
        '<think>t</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1]}}'
    )
    assert p.kind == "tool_call" and not p.closed and not p.well_tagged


def test_white_space_around_tags_is_well_formed():
    text = '\n  <think>\nlook closer\n</think>\n\n<tool_call>  {"name": "select_images", "arguments": {"target_images": [1, 2]}}  </tool_call>\n\n'
    p = parse_turn(text)
    assert p.kind == "tool_call" and p.well_formed
    assert p.think == "look closer"
    assert p.tool_call.arguments == {"target_images": [1, 2]}
    p = parse_turn("<think>x</think><answer>[2,1,3]</answer>")  # no white space at all
    assert p.kind == "answer" and p.well_formed and p.answer == [2, 1, 3]
    p = parse_turn("<think>x</think>\n<answer>\n[ 2 , 1 , 3 ]\n</answer>\n")
    assert p.kind == "answer" and p.well_formed and p.answer == [2, 1, 3]


# ------------------------------------------------------------------ tolerated slips: understood, not well formed


def _call_turn(body: str, after: str = "") -> str:
    return f"<think>zoom in</think>\n<tool_call>\n{body}\n</tool_call>{after}"


ARGS = {"bbox_2d": [10, 20, 30, 40], "target_image": 2}
CALL = json.dumps({"name": "crop_image", "arguments": ARGS})


@pytest.mark.parametrize(
    "text, problem",
    [
        (_call_turn(f"```json\n{CALL}\n```"), "code fence"),
        (_call_turn(f"```\n{CALL}\n```"), "code fence"),
        (_call_turn(CALL, after="\nI will wait for the result."), "text after </tool_call>"),
        (_call_turn(json.dumps({"name": "crop_image", "arguments": json.dumps(ARGS)})), "JSON string"),
        (_call_turn(json.dumps({"name": "crop_image", "parameters": ARGS})), "'parameters'"),
        (_call_turn(CALL + "}"), "text after the tool call's JSON object"),
        (f"<think>zoom in</think>\n<tool_call>\n{CALL}", "unclosed <tool_call>"),  # stop string dropped
        (f"<tool_call>\n{CALL}\n</tool_call>", "missing <think>"),
        (
            f"<think>zoom in</think>\nLet me look.\n<tool_call>\n{CALL}\n</tool_call>",
            "followed by exactly one",
        ),
        (f"<think>a</think><think>b</think><tool_call>{CALL}</tool_call>", "followed by exactly one"),
        (
            f"<think>zoom in</think><tool_call>{CALL}</tool_call><tool_call>{CALL}</tool_call>",
            "more than one tool call",
        ),
        (
            f"<think>zoom in</think><tool_call>{CALL}</tool_call><answer>[1, 2]</answer>",
            "both a tool call and an answer",
        ),
    ],
)
def test_tolerated_tool_calls(text, problem):
    p = parse_turn(text)
    assert p.kind == "tool_call"
    assert p.tool_call.error is None
    assert p.tool_call.name == "crop_image" and p.tool_call.arguments == ARGS
    assert not p.well_formed
    assert any(problem in x for x in p.problems), p.problems


@pytest.mark.parametrize(
    "text, numbers, int_list, problem",
    [
        ("<think>t</think><answer>3, 1, 2</answer>", [3, 1, 2], False, "not a list of integers"),
        ("<think>t</think><answer>[3, 1, 2]</answer> Done.", [3, 1, 2], True, "text after </answer>"),
        ("<think>t</think><answer>[3, 1, 2]", [3, 1, 2], True, "unclosed <answer>"),
        ("<think>t</think><answer>[3, 1.5, 2]</answer>", [3, 2], False, "not a list of integers"),
        ("<think>t</think><answer>[]</answer>", [], False, "not a list of integers"),
        (
            "<think>t</think><answer>The best is (3), then (1).</answer>",
            [3, 1],
            False,
            "not a list of integers",
        ),
        ("<answer>[3, 1, 2]</answer>", [3, 1, 2], True, "missing <think>"),
        ("<answer>[3, 1, 2]</answer><think>t</think>", [3, 1, 2], True, "text after </answer>"),
        ("<think>t</think><answer>[3]</answer><answer>[1]</answer>", [3], True, "more than one answer"),
    ],
)
def test_tolerated_answers(text, numbers, int_list, problem):
    p = parse_turn(text)
    assert p.kind == "answer"
    assert p.answer == numbers
    assert p.answer_is_int_list is int_list
    assert not p.well_formed
    assert any(problem in x for x in p.problems), p.problems


def test_negative_numbers_are_integers_but_normalised_away():
    p = parse_turn("<think>t</think><answer>[-1, 2, 1]</answer>")
    assert p.kind == "answer" and p.answer == [-1, 2, 1] and p.answer_is_int_list
    assert normalize_ranking(p.answer, 3) == [2, 1, 3]


def test_tags_mentioned_in_the_reasoning_are_not_the_action():
    text = (
        "<think>I must not give the <answer> yet; first a <tool_call> to look closer.</think>\n"
        f"<tool_call>\n{CALL}\n</tool_call>"
    )
    p = parse_turn(text)
    assert p.kind == "tool_call" and p.tool_call.arguments == ARGS and p.tool_call.error is None
    assert p.well_formed
    text = "<think>no <tool_call> needed, candidate 2 is obvious</think>\n<answer>[2, 1, 3]</answer>"
    p = parse_turn(text)
    assert p.kind == "answer" and p.answer == [2, 1, 3] and p.well_formed


def test_tags_only_mentioned_in_the_reasoning_are_no_action():
    p = parse_turn("<think>I will give the <answer> after a <tool_call> [1, 2]</think>")
    assert p.kind == "malformed" and p.answer is None and p.tool_call is None


def test_unknown_tool_name_is_still_a_well_formed_call():
    # The format is right; the harness reports the unknown tool when it runs the call.
    p = parse_turn(_call_turn('{"name": "zoom", "arguments": {"x": 1}}'))
    assert (
        p.kind == "tool_call" and p.well_formed and p.tool_call.name == "zoom" and p.tool_call.error is None
    )


@pytest.mark.parametrize(
    "body, error",
    [
        ('{"name": "crop_image", "arguments": {"bbox_2d": [1, 2, 3, 4], ', "not valid JSON"),
        ("crop_image(bbox_2d=[1, 2, 3, 4], target_image=1)", "not valid JSON"),
        ("", "not valid JSON"),
        ('["crop_image", {"target_image": 1}]', "must be a JSON object"),
        ('"crop_image"', "must be a JSON object"),
        ('{"arguments": {"target_image": 1}}', "no function name"),
        ('{"name": "", "arguments": {}}', "no function name"),
        ('{"name": 7, "arguments": {}}', "no function name"),
        ('{"name": "crop_image"}', "must be a JSON object"),
        ('{"name": "crop_image", "arguments": [1, 2, 3, 4]}', "must be a JSON object"),
        ('{"name": "crop_image", "arguments": null}', "must be a JSON object"),
        ('{"name": "crop_image", "arguments": "{bbox: [1, 2]}"}', "arguments are not valid JSON"),
        ('{"name": "crop_image", "arguments": "[1, 2]"}', "must be a JSON object"),
        ('{"name": "crop_image", "arguments": {"target_image": 1' + "9" * 5000 + "}}", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "JSON"),
    ],
)
def test_broken_tool_calls_carry_an_error(body, error):
    p = parse_turn(_call_turn(body))
    assert p.kind == "tool_call"
    assert p.tool_call.error and error in p.tool_call.error
    assert p.tool_call.arguments is None
    assert not p.well_formed
    assert p.tool_call.error in p.problems


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I think candidate 3 is the best match.",
        "<think>I keep thinking and never act.</think>",
        "<think>unclosed thinking",
        "[3, 1, 2]",
        "<tool_call",
        "</answer>[1]",
        "<ANSWER>[1, 2]</ANSWER>",
    ],
)
def test_turns_without_an_action_are_malformed(text):
    p = parse_turn(text)
    assert p.kind == "malformed"
    assert p.reason and "no <tool_call> or <answer>" in p.reason
    assert p.reason in p.problems
    assert not p.well_formed and p.answer is None and p.tool_call is None


@pytest.mark.parametrize("value", [None, 3, b"<answer>[1]</answer>", ["<answer>[1]</answer>"]])
def test_non_text_is_malformed(value):
    p = parse_turn(value)
    assert p.kind == "malformed" and p.reason == "the turn is not text"


def test_first_action_wins():
    p = parse_turn(f"<think>t</think><answer>[2, 1]</answer><tool_call>{CALL}</tool_call>")
    assert p.kind == "answer" and p.answer == [2, 1] and not p.well_formed


# ------------------------------------------------------------------ normalize_ranking


def test_normalize_ranking_passes_a_permutation_through():
    assert normalize_ranking([3, 1, 2, 5, 4], 5) == [3, 1, 2, 5, 4]


def test_normalize_ranking_drops_duplicates_and_out_of_range():
    assert normalize_ranking([2, 2, 7, 0, -1, 1, 2, 3], 3) == [2, 1, 3]


def test_normalize_ranking_appends_omitted_in_prior_order():
    assert normalize_ranking([4], 5) == [4, 1, 2, 3, 5]
    assert normalize_ranking([4], 5, prior=[5, 3, 1, 4, 2]) == [4, 5, 3, 1, 2]
    assert normalize_ranking([], 3) == [1, 2, 3]
    assert normalize_ranking(None, 3, prior=[3, 2, 1]) == [3, 2, 1]


def test_normalize_ranking_rejects_bools_and_non_integers():
    # True == 1 in Python: without the check True would count as candidate 1.
    assert normalize_ranking([True, 3, 2.0, "1", None, 2], 3) == [3, 2, 1]
    assert normalize_ranking([False, True], 2) == [1, 2]


def test_normalize_ranking_empty_list():
    assert normalize_ranking([1, 2], 0) == []


# ------------------------------------------------------------------ fuzzing: never raise, always explain

TAGS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "```json",
    "```",
    "{",
    "}",
    "[",
    "]",
    '"',
    ",",
    ":",
    "\n",
    " ",
    '"arguments": ',
    '"name": ',
    '"select_images"',
    '"crop_image"',
    "NaN",
    "1e999",
    "-0",
    "\\",
    "\x00",
]


@st.composite
def mutated(draw):
    """An example turn changed by a few character / tag insertions, deletions and swaps."""
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(
            st.sampled_from(["insert", "insert_tag", "delete", "delete_span", "swap", "duplicate_tag", "cut"])
        )
        n = len(text)
        i = draw(st.integers(0, n))
        if op == "insert":
            text = text[:i] + draw(st.text(min_size=1, max_size=3)) + text[i:]
        elif op == "insert_tag":
            text = text[:i] + draw(st.sampled_from(TAGS)) + text[i:]
        elif op == "delete" and n:
            i = min(i, n - 1)
            text = text[:i] + text[i + 1 :]
        elif op == "delete_span" and n:
            j = draw(st.integers(i, min(n, i + 20)))
            text = text[:i] + text[j:]
        elif op == "swap" and n >= 2:
            i = min(i, n - 2)
            j = draw(st.integers(i + 1, n - 1))
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
        elif op == "duplicate_tag":
            tag = draw(st.sampled_from(TAGS[:6]))
            k = text.find(tag)
            if k >= 0:
                text = text[:i] + tag + text[i:]
        elif op == "cut":
            text = text[:i]
    return text


def _arbitrary_turns():
    return st.one_of(
        mutated(),
        st.text(max_size=200),
        st.lists(st.sampled_from(TAGS) | st.text(max_size=5), max_size=20).map("".join),
        st.builds(
            lambda think, body, tag: f"<think>{think}</think><{tag}>{body}</{tag}>",
            st.text(max_size=30),
            st.text(max_size=60),
            st.sampled_from(["tool_call", "answer"]),
        ),
    )


@settings(max_examples=10000, deadline=None, database=None)
@given(_arbitrary_turns())
def test_parser_never_raises_and_always_explains(text):
    p = parse_turn(text)
    assert p.kind in ("tool_call", "answer", "malformed")
    if p.kind == "malformed":
        assert isinstance(p.reason, str) and p.reason.strip()
        assert p.tool_call is None and p.answer is None and not p.well_formed
    elif p.kind == "tool_call":
        call = p.tool_call
        assert call is not None and p.answer is None
        if call.error is not None:
            assert isinstance(call.error, str) and call.error.strip()
            assert not p.well_formed
        else:
            assert isinstance(call.name, str) and call.name and isinstance(call.arguments, dict)
    else:
        assert p.tool_call is None
        assert isinstance(p.answer, list) and all(type(n) is int for n in p.answer)
        assert isinstance(p.answer_text, str)
        ranking = normalize_ranking(p.answer, 10)
        assert sorted(ranking) == list(range(1, 11))
    if p.well_formed:
        assert p.problems == [] and p.think is not None and p.kind != "malformed"
    else:
        assert p.problems and all(isinstance(x, str) and x.strip() for x in p.problems)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(st.one_of(st.integers(-5, 30), st.booleans(), st.none(), st.floats(), st.text(max_size=2))),
    st.integers(0, 20),
)
def test_normalize_ranking_is_always_a_permutation(answer, k):
    prior = list(range(k, 0, -1))
    out = normalize_ranking(answer, k, prior)
    assert sorted(out) == list(range(1, k + 1))
    listed = []
    for n in answer:
        if type(n) is int and 1 <= n <= k and n not in listed:
            listed.append(n)
    assert out[: len(listed)] == listed
    assert out[len(listed) :] == [n for n in prior if n not in listed]
