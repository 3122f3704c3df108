"""Prompt profiles and the conversations they build."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vretrver.protocol import (
    ProfileError,
    build_conversation,
    list_profiles,
    load_profile,
    observation_message,
    system_prompt,
)
from vretrver.protocol.profile import PROFILES_DIR
from vretrver.samples import Candidate, Query, Sample

PROFILES = ["v-retrver", "text-cot"]
INSTRUCTION = "Retrieve a Wikipedia image-description pair that answers this question about the image."


def make_sample(
    k: int = 4, query_images: int = 1, query_text: str | None = "What breed is this cat?"
) -> Sample:
    # Candidates of every modality: image + text, text only, image only.
    cands = []
    for i in range(1, k + 1):
        if i % 3 == 1:
            cands.append(Candidate(f"doc{i}", text=f"caption number {i}", image=f"/data/c{i}.jpg"))
        elif i % 3 == 2:
            cands.append(Candidate(f"doc{i}", text=f"text-only passage {i}"))
        else:
            cands.append(Candidate(f"doc{i}", image=f"/data/c{i}.jpg"))
    q = Query(
        text=query_text, images=[f"/data/q{j}.jpg" for j in range(query_images)], instruction=INSTRUCTION
    )
    return Sample("s1", q, cands, positives=["doc1"], task="oven_task8")


def user_parts(conv):
    assert [m["role"] for m in conv.messages] == ["system", "user"]
    return conv.messages[1]["content"]


def user_text(conv) -> str:
    return "".join(p["text"] if p["type"] == "text" else "<IMG>" for p in user_parts(conv))


def n_image_parts(parts) -> int:
    return sum(p["type"] == "image" for p in parts)


@pytest.mark.parametrize("name", list_profiles())
def test_every_builtin_profile_builds_a_conversation(name):
    conv = build_conversation(make_sample(4), name)
    assert n_image_parts(user_parts(conv)) == len(conv.images) == 4
    assert conv.messages[0]["role"] == "system" and conv.messages[0]["content"]


def test_builtin_profiles():
    assert set(PROFILES) <= set(list_profiles())
    p = load_profile("v-retrver")
    assert p.tools == ["select_images", "crop_image"] and p.max_tool_calls == 2 and p.uses_tools
    assert p.stop == ["</tool_call>", "</answer>"]
    t = load_profile("text-cot")
    assert t.tools == [] and not t.uses_tools and t.tool_schemas() == []
    assert load_profile() is load_profile("v-retrver")  # the default; loaded once
    assert load_profile(p) is p


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "k, query_images, query_text", [(4, 1, "a cat"), (7, 0, "a cat"), (3, 2, None), (1, 1, "x")]
)
def test_image_parts_match_images(profile, k, query_images, query_text):
    s = make_sample(k, query_images, query_text)
    conv = build_conversation(s, profile)
    parts = user_parts(conv)
    assert n_image_parts(parts) == len(conv.images)
    # Images in the order of their placeholders: query images, then each candidate's image.
    expected = list(s.query.images) + [c.image for c in s.candidates if c.image]
    assert conv.images == expected
    for p in parts:
        assert p["type"] in ("text", "image")
        if p["type"] == "text":
            assert p["text"] and "\x00" not in p["text"]


@pytest.mark.parametrize("profile", PROFILES)
def test_user_turn_layout(profile):
    s = make_sample(5)
    text = user_text(build_conversation(s, profile))
    # Instruction, then the query (its image placeholder, then its text), then the numbered candidates.
    assert text.startswith(INSTRUCTION + "\nQuery: <IMG>What breed is this cat?\n")
    assert "\nCandidates:\n" in text
    assert "(1) <IMG>caption number 1\n" in text
    assert "(2) text-only passage 2\n" in text
    assert "(3) <IMG>\n" in text
    assert "(4) <IMG>caption number 4\n" in text
    assert "(5) text-only passage 5\n" in text
    assert "(6)" not in text
    positions = [text.index(f"({i}) ") for i in range(1, 6)]
    assert positions == sorted(positions) and text.index("Query:") < positions[0]
    assert "Rank all 5 candidates" in text
    assert "<answer>[1, 2, 3, ...]</answer>" in text
    assert not text.endswith("\n")


def test_example_ranking_for_few_candidates():
    text = user_text(build_conversation(make_sample(2), "v-retrver"))
    assert "<answer>[1, 2]</answer>" in text


def test_tool_budget_and_tools_in_the_user_turn():
    text = user_text(build_conversation(make_sample(3), "v-retrver"))
    assert "at most 2 tools" in text and "select_images" in text and "crop_image" in text
    text = user_text(build_conversation(make_sample(3), "v-retrver", max_tool_calls=5))
    assert "at most 5 tools" in text
    text = user_text(build_conversation(make_sample(3), "text-cot"))
    assert "tool" not in text.lower()


def test_no_instruction_and_no_query_text():
    s = make_sample(2, 1, None)
    s.query.instruction = None
    text = user_text(build_conversation(s, "v-retrver"))
    assert text.startswith("Query: <IMG>\n\nCandidates:\n")


def _tools_block(prompt: str) -> list[str]:
    m = re.search(r"<tools>\n(.*?)</tools>", prompt, re.S)
    assert m, prompt
    return m.group(1).splitlines()


def test_system_prompt_lists_the_tool_schemas_as_json_lines():
    prompt = system_prompt(load_profile("v-retrver"))
    lines = _tools_block(prompt)
    assert len(lines) == 2
    schemas = [json.loads(line) for line in lines]
    for s in schemas:
        assert list(s) == ["type", "function"]  # key order as the Qwen tool template writes it
        assert s["type"] == "function"
        assert list(s["function"]) == ["name", "description", "parameters"]
    assert [s["function"]["name"] for s in schemas] == ["select_images", "crop_image"]
    sel, crop = (s["function"]["parameters"] for s in schemas)
    assert sel["required"] == ["target_images"] and sel["properties"]["target_images"]["type"] == "array"
    assert crop["required"] == ["bbox_2d", "target_image"]
    assert crop["properties"]["target_image"]["type"] == "integer"
    # Properties stay within type / description / enum: what verl's tool schema keeps.
    for params in (sel, crop):
        for prop in params["properties"].values():
            assert set(prop) <= {"type", "description", "enum"}
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in prompt
    # The conversation opens with exactly this system prompt.
    conv = build_conversation(make_sample(3), "v-retrver")
    assert conv.messages[0] == {"role": "system", "content": prompt}


def test_coordinate_hint_follows_the_convention():
    p = load_profile("v-retrver")

    def bbox_description(coords: str) -> str:
        schema = json.loads(_tools_block(system_prompt(p, coords))[1])
        return schema["function"]["parameters"]["properties"]["bbox_2d"]["description"]

    assert "pixels" in bbox_description("qwen2.5-vl")
    assert "0 to 1000" in bbox_description("qwen3-vl")
    conv = build_conversation(make_sample(3), "v-retrver", coordinates="qwen3-vl")
    assert "0 to 1000" in conv.messages[0]["content"]


def test_text_cot_system_prompt_has_no_tools():
    prompt = system_prompt(load_profile("text-cot"))
    assert "<tools>" not in prompt and "<tool_call>" not in prompt
    assert "rank" in prompt


def test_observation_message_images_and_error():
    p = load_profile("v-retrver")
    imgs = [Image.new("RGB", (56, 56)) for _ in range(3)]
    parts, shown = observation_message(p, "select_images", [0, 3, 7], imgs)
    assert shown == imgs and n_image_parts(parts) == 3
    text = "".join(x.get("text", "<IMG>") for x in parts)
    assert text.startswith("<tool_response>\n<IMG><IMG><IMG>")
    assert "images 0, 3, 7" in text and text.rstrip().endswith("</tool_response>")
    parts, shown = observation_message(p, "crop_image", [2], imgs[:1])
    assert n_image_parts(parts) == 1 and "image 2" in "".join(x.get("text", "") for x in parts)
    parts, shown = observation_message(p, None, [], [], error="bbox_2d has negative coordinates")
    assert shown == [] and n_image_parts(parts) == 0
    assert "Error: bbox_2d has negative coordinates" in parts[0]["text"]


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.text(max_size=40),
    st.lists(st.tuples(st.text(max_size=20), st.booleans()), min_size=1, max_size=6),
    st.sampled_from(PROFILES),
)
def test_data_text_cannot_break_image_placeholders(query_text, cands, profile):
    # Any text in the data (NUL characters, markup, braces) leaves one image part per image.
    candidates = [
        Candidate(f"c{i}", text=t or "x", image=f"/img/{i}.png" if has_img else None)
        for i, (t, has_img) in enumerate(cands)
    ]
    s = Sample("s", Query(text=query_text or None, images=["/img/q.png"]), candidates)
    conv = build_conversation(s, profile)
    assert n_image_parts(user_parts(conv)) == len(conv.images) == 1 + sum(h for _, h in cands)
    text = "".join(p.get("text", "") for p in user_parts(conv))
    for c in candidates:
        assert c.text.rstrip("\n") in text


# ------------------------------------------------------------------ custom and broken profile folders


def copy_profile(tmp_path: Path, name: str = "v-retrver") -> Path:
    dst = tmp_path / f"my-{name}"
    shutil.copytree(PROFILES_DIR / name, dst)
    return dst


def test_custom_profile_folder_by_path(tmp_path):
    folder = copy_profile(tmp_path)
    user = folder / "user.jinja"
    user.write_text("CHECKPOINT-7 LAYOUT\n" + user.read_text().replace("Candidates:", "Options:"))
    s = make_sample(3)
    for ref in (str(folder), folder):
        conv = build_conversation(s, ref)
        text = user_text(conv)
        assert text.startswith("CHECKPOINT-7 LAYOUT\n") and "Options:" in text and "Candidates:" not in text
        assert n_image_parts(user_parts(conv)) == len(conv.images) == 3
    p = load_profile(folder)
    assert p.folder == folder.resolve() and p.tools == ["select_images", "crop_image"]
    # The built-in profile is untouched.
    assert "Candidates:" in user_text(build_conversation(s, "v-retrver"))


def test_a_folder_named_like_a_builtin_is_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "v-retrver"
    shutil.copytree(PROFILES_DIR / "v-retrver", folder)
    (folder / "user.jinja").write_text("MY OWN COPY {{ candidates | length }}")
    monkeypatch.chdir(tmp_path)
    s = make_sample(2)
    for ref in ("./v-retrver", "v-retrver/", folder):
        assert load_profile(ref).folder == folder.resolve()
        assert user_text(build_conversation(s, ref)) == "MY OWN COPY 2"
    assert load_profile("v-retrver").folder == PROFILES_DIR / "v-retrver"  # a bare name is the built-in


def test_custom_profile_settings(tmp_path):
    folder = copy_profile(tmp_path)
    meta = json.loads((folder / "profile.json").read_text())
    meta.update(name="three-calls", max_tool_calls=3, temperature_hint=0.7)
    (folder / "profile.json").write_text(json.dumps(meta))
    p = load_profile(folder)
    assert (
        p.name == "three-calls"
        and p.max_tool_calls == 3
        and p.settings == {"description": meta["description"], "temperature_hint": 0.7}
    )
    assert "at most 3 tools" in user_text(build_conversation(make_sample(2), p))


def _broken(tmp_path, edit) -> Path:
    folder = copy_profile(tmp_path)
    edit(folder)
    return folder


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: (f / "profile.json").unlink(), "no profile.json"),
        (
            lambda f: (f / "profile.json").write_text('{"tools": ["select_images",'),
            "profile.json:1: invalid JSON",
        ),
        (
            lambda f: (f / "profile.json").write_text(
                '{"tools": "select_images", "max_tool_calls": 2, "stop": []}'
            ),
            "field 'tools'",
        ),
        (
            lambda f: (f / "profile.json").write_text('{"tools": [], "max_tool_calls": "2", "stop": []}'),
            "field 'max_tool_calls'",
        ),
        (lambda f: (f / "user.jinja").unlink(), "missing template file user.jinja"),
        (lambda f: (f / "observation.jinja").unlink(), "missing template file observation.jinja"),
        (lambda f: (f / "tools.json").unlink(), "missing template file tools.json"),
        (lambda f: (f / "user.jinja").write_text("Query: {% for x in query.images %}{{ x }"), "user.jinja"),
        (lambda f: (f / "system.jinja").write_text("{% if %}"), "system.jinja"),
        (lambda f: (f / "tools.json").write_text("[{"), "tools.json"),
        (lambda f: (f / "tools.json").write_text('[{"type": "function"}]'), "tools.json"),
        (
            lambda f: (f / "tools.json").write_text('[{"type": "function", "function": {"name": "zoom"}}]'),
            "do not match",
        ),
    ],
)
def test_broken_profile_folder_gives_a_profile_error(tmp_path, edit, message):
    folder = _broken(tmp_path, edit)
    with pytest.raises(ProfileError) as e:
        load_profile(folder)
    assert message in str(e.value)
    assert str(folder) in str(e.value) or message.startswith("no profile")


def test_template_errors_at_render_time_name_the_file(tmp_path):
    # The syntax is fine, but the template asks for a field a sample does not have.
    folder = _broken(
        tmp_path, lambda f: (f / "user.jinja").write_text("{{ query.txt }} {{ candidates | length }}")
    )
    profile = load_profile(folder)
    with pytest.raises(ProfileError, match=r"user\.jinja"):
        build_conversation(make_sample(2), profile)


def test_unknown_profile_name():
    with pytest.raises(ProfileError, match="unknown prompt profile 'v-retriever'.*v-retrver"):
        load_profile("v-retriever")


def test_profile_error_is_a_value_error():
    assert issubclass(ProfileError, ValueError)
