"""One reranking conversation driven by scripted turns: tools, observations, budget, answers, records."""

from __future__ import annotations

import json

import pytest
from photos import ASTRONAUT, CHELSEA, COFFEE
from PIL import Image

from vretrver.episode import Episode, dumps_record
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import ToolConfig


def make_sample(query_image: str | None = ASTRONAUT) -> Sample:
    return Sample(
        "mscoco:17/a",
        Query(
            "a person in a white space suit", [query_image] if query_image else [], "Find the matching photo."
        ),
        [
            Candidate("c1", "a ginger cat", CHELSEA),
            Candidate("c2", image=COFFEE),
            Candidate("c3", "an astronaut on the moon"),  # text only
            Candidate("c4", "portrait of an astronaut", ASTRONAUT),
        ],
        positives=["c4"],
    )


def turn_call(name: str, args: dict, think: str = "I need a closer look.") -> str:
    return (
        f"<think>{think}</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"
    )


def turn_answer(numbers, think: str = "Candidate 4 shows the astronaut.") -> str:
    return f"<think>{think}</think>\n<answer>{json.dumps(numbers)}</answer>"


SELECT = turn_call("select_images", {"target_images": [0, 1, 4]})
CROP = turn_call("crop_image", {"bbox_2d": [126, 252, 252, 378], "target_image": 4})
BAD_CROP = turn_call("crop_image", {"bbox_2d": [300, 10, 100, 50], "target_image": 4})


def n_image_parts(message) -> int:
    return sum(p["type"] == "image" for p in message["content"])


def message_text(message) -> str:
    return "".join(p.get("text", "<IMG>") for p in message["content"])


def test_tool_observation_answer():
    ep = Episode(make_sample())
    conv = ep.conversation
    assert [m["role"] for m in conv.messages] == ["system", "user"]
    n0 = len(conv.images)
    assert n0 == 1 + 3  # query image + the three candidates that have one

    r = ep.step(SELECT)
    assert r.kind == "observation" and not ep.done
    assert len(r.images) == 3
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user"]
    assert conv.messages[2] == {"role": "assistant", "content": SELECT}
    obs = conv.messages[3]
    assert message_text(obs).startswith("<tool_response>\n<IMG><IMG><IMG>")
    assert message_text(obs).rstrip().endswith("</tool_response>")
    assert n_image_parts(obs) == 3 and obs["content"] == r.parts
    assert conv.images[n0:] == r.images
    assert [im.size for im in r.images] == [(504, 504), (448, 308), (504, 504)]
    assert ep.n_valid_calls == 1 and ep.n_invalid_calls == 0

    r = ep.step(CROP)
    assert r.kind == "observation" and len(r.images) == 1
    assert n_image_parts(conv.messages[-1]) == 1 and conv.images[-1] is r.images[0]
    assert ep.turns[-1].tool.box == (76, 204, 308, 436)  # see tests/test_tools.py for the arithmetic
    assert ep.n_valid_calls == 2
    assert len(conv.images) == n0 + 4

    r = ep.step(turn_answer([4, 1, 2, 3]))
    assert r.kind == "answer" and ep.done and ep.answered
    assert ep.answer == [4, 1, 2, 3] and ep.ranking == [4, 1, 2, 3]
    assert ep.ranked_ids() == ["c4", "c1", "c2", "c3"]
    assert ep.end_reason == "answer" and ep.failed is None
    assert [t.role for t in ep.turns] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert conv.messages[-1]["role"] == "assistant"
    # Every image placeholder in the whole conversation has its image.
    total = sum(n_image_parts(m) for m in conv.messages if isinstance(m["content"], list))
    assert total == len(conv.images)


def test_direct_answer():
    ep = Episode(make_sample())
    assert ep.step(turn_answer([2, 4, 1, 3])).kind == "answer"
    assert ep.ranking == [2, 4, 1, 3] and ep.n_tool_calls == 0


def test_third_tool_call_exhausts_the_budget():
    ep = Episode(make_sample())
    assert ep.max_tool_calls == 2
    assert ep.step(SELECT).kind == "observation"
    assert ep.step(CROP).kind == "observation"
    r = ep.step(turn_call("select_images", {"target_images": [2, 3]}))
    assert r.kind == "ended" and ep.done
    assert ep.answer is None and not ep.answered
    assert ep.ranking == [1, 2, 3, 4] and ep.ranked_ids() == ["c1", "c2", "c3", "c4"]
    assert "budget" in ep.end_reason
    assert ep.n_valid_calls == 2 and ep.n_tool_calls == 2  # the third call was not run
    assert ep.conversation.messages[-1]["role"] == "assistant"
    with pytest.raises(RuntimeError):
        ep.step(turn_answer([1, 2, 3, 4]))


def test_budget_is_a_setting():
    ep = Episode(make_sample(), max_tool_calls=0)
    assert "at most 0 tools" in message_text(ep.conversation.messages[1])
    assert ep.step(SELECT).kind == "ended" and ep.answer is None
    ep = Episode(make_sample(), max_tool_calls=3)
    for _ in range(3):
        assert ep.step(SELECT).kind == "observation"
    assert ep.step(SELECT).kind == "ended"
    assert ep.n_valid_calls == 3


def test_invalid_calls_are_counted_and_shown():
    ep = Episode(make_sample())
    r = ep.step(BAD_CROP)
    assert r.kind == "observation" and not ep.done
    assert r.images == [] and n_image_parts(ep.conversation.messages[-1]) == 0
    text = message_text(ep.conversation.messages[-1])
    assert "<tool_response>" in text and "Error: bbox_2d must be [x1, y1, x2, y2]" in text
    assert ep.n_invalid_calls == 1 and ep.n_valid_calls == 0
    tool_turn = ep.turns[-1]
    assert tool_turn.role == "tool" and tool_turn.tool.valid is False and "Error:" in tool_turn.text

    # Broken JSON and an unknown tool are invalid calls too; the last one exhausts the budget of 2.
    r = ep.step("<think>x</think>\n<tool_call>\n{'name': crop}\n</tool_call>")
    assert r.kind == "observation" and "not valid JSON" in message_text(ep.conversation.messages[-1])
    assert ep.n_invalid_calls == 2
    assert ep.step(turn_call("zoom", {"x": 1})).kind == "ended"
    assert ep.n_invalid_calls == 2 and ep.answer is None


def test_invalid_then_valid_then_answer():
    ep = Episode(make_sample())
    ep.step(turn_call("select_images", {"target_images": [3]}))  # candidate 3 is text only
    assert "candidate 3 has no image" in message_text(ep.conversation.messages[-1])
    ep.step(CROP)
    ep.step(turn_answer([4, 3]))
    assert (ep.n_valid_calls, ep.n_invalid_calls) == (1, 1)
    assert ep.ranking == [4, 3, 1, 2]


def test_query_without_image():
    ep = Episode(make_sample(query_image=None))
    ep.step(turn_call("crop_image", {"bbox_2d": [0, 0, 10, 10], "target_image": 0}))
    assert "the query has no image" in message_text(ep.conversation.messages[-1])
    assert ep.n_invalid_calls == 1


@pytest.mark.parametrize(
    "answer, ranking",
    [
        ([4, 4, 1, 4, 2, 3], [4, 1, 2, 3]),
        ([9, 0, -2, 2], [2, 1, 3, 4]),
        ([3], [3, 1, 2, 4]),
        ([], [1, 2, 3, 4]),
    ],
)
def test_answers_are_normalised(answer, ranking):
    ep = Episode(make_sample())
    ep.step(turn_answer(answer))
    assert ep.answer == answer  # as the model wrote it
    assert ep.ranking == ranking
    assert sorted(ep.ranked_ids()) == ["c1", "c2", "c3", "c4"]


def test_sloppy_answer_is_still_used():
    ep = Episode(make_sample())
    ep.step("<think>t</think> <answer>4, 2</answer> That is all.")
    assert ep.ranking == [4, 2, 1, 3] and not ep.turns[-1].parsed.well_formed


@pytest.mark.parametrize(
    "text",
    ["Candidate 4 is best.", "<think>still thinking</think>", "", "<think>a</think><answr>[1]</answr>"],
)
def test_malformed_turn_ends_the_episode(text):
    ep = Episode(make_sample())
    ep.step(SELECT)
    r = ep.step(text)
    assert r.kind == "ended" and ep.done and ep.answer is None
    assert ep.ranking == [1, 2, 3, 4]
    assert ep.end_reason.startswith("malformed turn: no <tool_call> or <answer>")
    assert ep.n_valid_calls == 1


def test_fail():
    ep = Episode(make_sample())
    ep.step(SELECT)
    ep.fail("timeout after 3 attempts")
    assert ep.done and ep.failed == "timeout after 3 attempts"
    assert ep.ranking == [1, 2, 3, 4] and ep.answer is None
    assert ep.end_reason == "engine failure: timeout after 3 attempts"
    rec = ep.to_record()
    assert rec["failed"] == "timeout after 3 attempts" and rec["ranked_ids"] == ["c1", "c2", "c3", "c4"]


def test_to_record_writes_tool_images(tmp_path):
    ep = Episode(make_sample())
    ep.step(SELECT)
    ep.step(BAD_CROP)
    ep.step(turn_answer([4, 1]))
    image_dir = tmp_path / "images"
    rec = ep.to_record(image_dir)
    json.loads(dumps_record(rec))  # JSON-able
    assert rec["sample_id"] == "mscoco:17/a" and rec["profile"] == "v-retrver"
    assert rec["answer"] == [4, 1] and rec["ranking"] == [4, 1, 2, 3]
    assert rec["ranked_ids"] == ["c4", "c1", "c2", "c3"]
    assert (rec["n_valid_calls"], rec["n_invalid_calls"], rec["end_reason"]) == (1, 1, "answer")
    assert [t["role"] for t in rec["turns"]] == ["assistant", "tool", "assistant", "tool", "assistant"]
    first = rec["turns"][0]
    assert first["parsed"]["kind"] == "tool_call" and first["parsed"]["well_formed"]
    assert first["parsed"]["tool_call"] == {
        "name": "select_images",
        "arguments": {"target_images": [0, 1, 4]},
        "error": None,
    }
    tool = rec["turns"][1]
    assert tool["tool"] == {
        "name": "select_images",
        "valid": True,
        "indices": [0, 1, 4],
        "error": None,
        "box": None,
    }
    names = tool["images"]
    assert len(names) == 3 and len(set(names)) == 3
    for name, img in zip(names, ep.turns[1].images, strict=True):
        assert "/" not in name and ":" not in name  # the sample id is made safe for a file name
        with Image.open(image_dir / name) as saved:
            assert saved.size == img.size
            assert list(saved.convert("RGB").getdata())[:50] == list(img.getdata())[:50]
    bad = rec["turns"][3]
    assert bad["tool"]["valid"] is False and bad["tool"]["error"] and "images" not in bad
    assert sorted(p.name for p in image_dir.iterdir()) == sorted(names)
    # Without a folder no file is written and no image names are listed.
    rec2 = ep.to_record()
    assert "images" not in rec2["turns"][1]


def test_text_cot_profile():
    ep = Episode(make_sample(), profile="text-cot")
    assert ep.max_tool_calls == 0 and not ep.profile.uses_tools
    assert "<tools>" not in ep.conversation.messages[0]["content"]
    r = ep.step(SELECT)
    assert r.kind == "ended" and ep.done and ep.answer is None
    assert ep.n_tool_calls == 0 and ep.ranking == [1, 2, 3, 4]
    ep = Episode(make_sample(), profile="text-cot")
    assert ep.step(turn_answer([3, 4])).kind == "answer" and ep.ranking == [3, 4, 1, 2]


def test_text_cot_ignores_a_budget_override():
    # A profile without tools has nothing to call, whatever the budget says.
    ep = Episode(make_sample(), profile="text-cot", max_tool_calls=2)
    assert ep.step(SELECT).kind == "ended" and ep.n_tool_calls == 0


def test_qwen3_coordinates():
    ep = Episode(make_sample(), tool_config=ToolConfig(coordinates="qwen3-vl"))
    assert "0 to 1000" in ep.conversation.messages[0]["content"]
    ep.step(turn_call("crop_image", {"bbox_2d": [250, 500, 500, 750], "target_image": 4}))
    assert ep.turns[-1].tool.box == (76, 204, 308, 436)


def _select_record(sample: Sample, image_dir) -> tuple[list[str], list[Image.Image]]:
    """One select_images call on candidate 1: the record's image names (saved under ``image_dir``) and
    the images the tool returned."""
    ep = Episode(sample)
    ep.step(turn_call("select_images", {"target_images": [1]}))
    ep.step(turn_answer([1]))
    return ep.to_record(image_dir)["turns"][1]["images"], ep.turns[1].images


def test_tool_images_of_tasks_that_share_query_ids_do_not_overwrite_each_other(tmp_path):
    # Two tasks of one run (GeneCIS galleries, say) with the same query id and window write into one
    # folder: each record must point at its own picture.
    images = tmp_path / "img"
    runs = {}
    for task, photo in (("genecis_change_object", CHELSEA), ("genecis_focus_object", COFFEE)):
        s = Sample("q7", Query("a thing"), [Candidate("c1", image=photo)], positives=["c1"], task=task)
        names, shown = _select_record(s, images)
        runs[task] = (names[0], shown[0])
    assert runs["genecis_change_object"][0] != runs["genecis_focus_object"][0]
    for name, shown in runs.values():  # after both runs: each file still holds its own task's image
        with Image.open(images / name) as saved:
            assert saved.size == shown.size
            assert saved.convert("RGB").tobytes() == shown.tobytes()


def test_ids_that_sanitise_alike_get_different_image_names(tmp_path):
    # "a/b" and "a_b" both read "a_b" once unsafe characters are replaced; so do task "x_y" + id "z" and
    # task "x" + id "y_z" once joined.
    pairs = [("t", "a/b"), ("t", "a_b"), ("x_y", "z"), ("x", "y_z")]
    names = set()
    for task, qid in pairs:
        s = Sample(qid, Query("q"), [Candidate("c1", image=CHELSEA)], positives=["c1"], task=task)
        name = _select_record(s, tmp_path / "img")[0][0]
        assert "/" not in name
        names.add(name)
    assert len(names) == len(pairs)
    assert len(list((tmp_path / "img").iterdir())) == len(pairs)
