"""The ``nano`` prompt profile: the v-retrver tools and turns with a short context, rendered for a nano
sample, taken through the real episode by the teacher and exported for LLaMA-Factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vretrver.nano import data
from vretrver.nano.data import gallery_samples, load_nano
from vretrver.nano.pipeline import NANO_PROFILE, synthesize_nano
from vretrver.nano.teacher import plan_turns
from vretrver.protocol import build_conversation, load_profile, parse_turn
from vretrver.protocol.conversation import observation_message, system_prompt


@pytest.fixture(scope="module")
def nano_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nano-data")


def text_of(parts: list[dict]) -> str:
    return "".join(p["text"] if p["type"] == "text" else "<image>" for p in parts)


def test_nano_profile_extends_v_retrver_with_a_short_prompt() -> None:
    nano, full = load_profile(NANO_PROFILE), load_profile("v-retrver")
    assert nano.name == "nano" and nano.tools == full.tools and nano.stop == full.stop
    assert nano.max_tool_calls == 5  # a crop per candidate of a 5-image gallery
    assert nano.tool_schemas() == full.tool_schemas()  # the same tools, so the same records and verl schemas
    prompt = system_prompt(nano)
    assert "crop_image(bbox_2d, target_image)" in prompt and "select_images(target_images)" in prompt
    assert "<tool_call>" in prompt and "<answer>" in prompt
    assert len(prompt) * 5 < len(system_prompt(full))  # no JSON schemas: the reason the profile exists


def test_nano_profile_renders_a_nano_sample(nano_root: Path) -> None:
    sample = gallery_samples(load_nano(nano_root, tasks=["nano_colour"], split="test", size=2)[0])[0]
    conv = build_conversation(sample, NANO_PROFILE, max_tool_calls=5)
    user = conv.messages[1]["content"]
    assert sum(p["type"] == "image" for p in user) == len(conv.images) == 5
    text = text_of(user)
    assert text.startswith(f"Query: {sample.query.text}\n(1) <image>\n(2) <image>")
    assert text.endswith("At most 5 tools.")
    parts, images = observation_message(load_profile(NANO_PROFILE), "crop_image", [1], ["crop.png"])
    assert text_of(parts) == "<tool_response>\n<image>\n</tool_response>" and images == ["crop.png"]
    parts, _ = observation_message(load_profile(NANO_PROFILE), "crop_image", [1], [], error="bad box")
    assert text_of(parts) == "<tool_response>\nError: bad box\n</tool_response>"


def test_teacher_turns_round_trip_through_the_parser_under_the_nano_profile(nano_root: Path) -> None:
    sample = gallery_samples(load_nano(nano_root, tasks=["nano_colour"], split="test", size=2)[0])[1]
    profile = load_profile(NANO_PROFILE)
    turns = plan_turns(sample, data.tool_config().for_profile(profile), budget=profile.max_tool_calls)
    for j, turn in enumerate(turns[:-1], 1):
        action = profile.turn_action(turn, parse_turn(turn))
        assert action[0] == "tool_call" and action[1].arguments["target_image"] == j
    kind, _, _ = profile.turn_action(turns[-1], parse_turn(turns[-1]))
    assert kind == "answer" and parse_turn(turns[-1]).answer[0] == sample.positive_numbers()[0]


def test_nano_trajectories_export_with_the_short_prompt(nano_root: Path, tmp_path: Path) -> None:
    from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory
    from vretrver.samples import write_samples

    samples = gallery_samples(load_nano(nano_root, tasks=["nano_colour"], split="test", size=3)[0])
    write_samples(tmp_path / "samples.jsonl", samples)
    stats = synthesize_nano(tmp_path / "samples.jsonl", tmp_path / "teacher", max_tool_calls=5)
    assert stats["all"]["kept"] == len(samples)
    export_llamafactory(tmp_path / "teacher", tmp_path / "lf", ExportConfig(name="nano_sft"), progress=False)
    rows = json.loads((tmp_path / "lf" / "nano_sft.json").read_text())
    assert len(rows) == len(samples)
    for row in rows:
        turns = row["conversations"]
        assert turns[0] == {"from": "system", "value": system_prompt(load_profile(NANO_PROFILE))}
        # Tool results are observation turns holding the crop alone, right before the name of its mark.
        observations = [t["value"] for t in turns if t["from"] == "observation"]
        assert observations == ["<image>"] * 5
        assert [t["from"] for t in turns].count("gpt") == 6
        assert len(row["images"]) == 10


def test_crop_rows_pair_each_crop_with_the_opening_of_the_next_turn(nano_root: Path, tmp_path: Path) -> None:
    from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory
    from vretrver.nano.warmup import write_crop_dataset
    from vretrver.samples import write_samples

    samples = gallery_samples(load_nano(nano_root, tasks=["nano_colour"], split="test", size=4)[0])
    write_samples(tmp_path / "samples.jsonl", samples)
    synthesize_nano(tmp_path / "samples.jsonl", tmp_path / "teacher", max_tool_calls=5)
    export_llamafactory(tmp_path / "teacher", tmp_path / "lf", ExportConfig(name="nano_sft"), progress=False)
    assert write_crop_dataset(tmp_path / "lf", "nano_sft", "nano_crops") == 5 * len(samples)
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["nano_crops"] == {**info["nano_sft"], "file_name": "nano_crops.json"}
    trajectories = json.loads((tmp_path / "lf" / "nano_sft.json").read_text())
    crops = json.loads((tmp_path / "lf" / "nano_crops.json").read_text())
    for i, (row, sample) in enumerate(zip(trajectories, samples)):
        target = sample.meta["detail"]["target"]
        labels = [sample.meta["detail"]["labels"][c.id] for c in sample.candidates]
        mine = crops[5 * i : 5 * i + 5]
        # The crops of the trajectory, in order (its images after the k of the first turn), each named
        # with the query restated and the verdict.
        assert [r["images"] for r in mine] == [[p] for p in row["images"][5:]]
        assert [r["conversations"][1]["value"] for r in mine] == [
            f"<think>Looking for {target}. Candidate {j}: {lab}. {'Match' if lab == target else 'No'}."
            for j, lab in enumerate(labels, 1)
        ]
        # Before each crop, the turn that asked for it: the query restated, the earlier crops named.
        asked = [t["value"] for t in row["conversations"] if t["from"] == "gpt"][:5]
        assert [r["conversations"][0] for r in mine] == [
            {"from": "human", "value": f"{a}\n<image>"} for a in asked
        ]
        assert all(f'target_image": {j}}}' in a for j, a in enumerate(asked, 1))
