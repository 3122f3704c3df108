"""A tool added from outside the package: one record and its own profile folder, and no edit anywhere
else, run through the evaluation, the SFT export and the verl rollout, with the same text everywhere.

The tool, ``mirror_image``, mirrors one image left to right. Its profile extends ``v-retrver`` and lists
it after the built-in tools: the system prompt's schemas and the observation sentence come from the
record, through the inherited templates.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from test_evaluate import candidates_file, lines, mbeir, swap_cfg  # noqa: F401 - mbeir is a fixture

from vretrver.episode import Episode
from vretrver.protocol import load_profile, system_prompt
from vretrver.sft import ScriptedEngine, SynthesisConfig, read_records, synthesize
from vretrver.sft.scripted import n_assistant_turns
from vretrver.tools import (
    ImageTable,
    Tool,
    ToolCaption,
    ToolConfig,
    ToolResult,
    describe_call,
    function_schema,
    register_tool,
    unregister_tool,
)

NAME = "mirror_image"


def mirror(args: object, images: ImageTable, cfg: ToolConfig) -> ToolResult:
    if not isinstance(args, dict) or "target_image" not in args:
        return ToolResult(NAME, False, error="mirror_image needs 'target_image': the index of an image")
    img, err = images.get(args["target_image"])
    if err:
        return ToolResult(NAME, False, error=err)
    return ToolResult(NAME, True, images=[ImageOps.mirror(img)], indices=[args["target_image"]])


MIRROR = Tool(
    name=NAME,
    run=mirror,
    schema=function_schema(
        NAME,
        "Mirror one image left to right. Index 0 is the query image; index k is the image of candidate k.",
        {"target_image": {"type": "integer", "description": "The index of the image to mirror."}},
    ),
    observation="The mirrored image {{ indices[0] }}.",
    caption=ToolCaption(heading="of {image}", image="{image}, mirrored"),
)


def call(target: int) -> str:
    body = json.dumps({"name": NAME, "arguments": {"target_image": target}})
    return f"<think>Mirror candidate {target} to compare.</think>\n<tool_call>\n{body}\n</tool_call>"


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The tool's record registered, and its profile folder; both gone afterwards."""
    register_tool(MIRROR)
    folder = tmp_path_factory.mktemp("profiles") / "v-retrver-mirror"
    folder.mkdir()
    meta = {
        "extends": "v-retrver",
        "name": "v-retrver-mirror",
        "tools": ["select_images", "crop_image", NAME],
    }
    (folder / "profile.json").write_text(json.dumps(meta))
    yield str(folder)
    unregister_tool(NAME)


def test_the_record_reaches_prompt_observation_and_viewer(profile, sample_photos):
    prof = load_profile(profile)
    schema_line = json.dumps(MIRROR.function_schema(), ensure_ascii=False)
    assert schema_line in system_prompt(prof) and schema_line not in system_prompt(load_profile("v-retrver"))
    from verl_rig import make_sample

    ep = Episode(make_sample(sample_photos), profile)
    step = ep.step(call(2))
    assert step.kind == "observation" and ep.n_valid_calls == 1
    assert ep.turns[-1].text == "<tool_response>\n<image>The mirrored image 2.\n</tool_response>"
    chelsea = Image.open(sample_photos["chelsea"]).convert("RGB")
    assert step.images[0].tobytes() == ImageOps.mirror(chelsea).tobytes()
    assert ep.step(call(3)).kind == "observation" and ep.turns[-1].tool.error == "candidate 3 has no image"
    cap = describe_call(NAME, [2], None, 1, lambda i: f"candidate {i}")
    assert (cap.heading, cap.images, cap.box) == ("of candidate 2", ["candidate 2, mirrored"], None)


def mirror_then_answer(conv, gen) -> str:
    """Mirror candidate 1, then swap the first two candidates."""
    return (
        call(1) if n_assistant_turns(conv) == 0 else "<think>Mirrored, 2 fits.</think><answer>[2, 1]</answer>"
    )


def test_evaluation_runs_the_tool(profile, mbeir, tmp_path):  # noqa: F811 - mbeir is the fixture
    from vretrver.evaluate import evaluate

    src = candidates_file(tmp_path / "cands.jsonl")
    engine = ScriptedEngine(mirror_then_answer)
    out, summary = evaluate(
        swap_cfg(mbeir, src, profile=profile), tmp_path / "res", progress=False, engine=engine
    )
    trajs = lines(out / "trajectories" / "mscoco_task0.jsonl")
    assert trajs and all(t["n_valid_calls"] == 1 and t["end_reason"] == "answer" for t in trajs)
    tool_turn = trajs[0]["turns"][1]
    assert tool_turn["tool"]["name"] == NAME and tool_turn["tool"]["indices"] == [1]
    assert tool_turn["text"] == "<tool_response>\n<image>The mirrored image 1.\n</tool_response>"
    assert summary["tasks"]["mscoco_task0"]["reranked"]  # the run was scored


def test_sft_export_renders_the_tool_turn_through_llamafactory(
    profile, sample_photos, tiny_qwen25vl, tmp_path
):
    """Synthesis with the new tool, export, and LLaMA-Factory's own pipeline: the text the SFT model learns
    is the evaluation's conversation, token for token."""
    from transformers import AutoProcessor
    from verl_rig import make_sample

    from vretrver.integrations.llamafactory import ExportConfig, export_llamafactory, render_with_llamafactory
    from vretrver.sft.records import record_sample

    processor = AutoProcessor.from_pretrained(tiny_qwen25vl)
    cfg = ToolConfig.from_processor(processor)
    turns = [call(2), "<think>2 matches.</think>\n<answer>[2, 1, 4, 3]</answer>"]
    engine = ScriptedEngine(lambda conv, gen: turns[n_assistant_turns(conv)], cfg)
    run = tmp_path / "run"
    synthesize(
        [make_sample(sample_photos)],
        engine,
        run,
        SynthesisConfig(profile=profile, attempts=1, temperature=0.0),
    )
    record = read_records(run / "trajectories.jsonl")[0]
    assert record["kept"], record["reasons"]
    report = export_llamafactory(run, tmp_path / "data", ExportConfig(name="vr", model=str(tiny_qwen25vl)))
    assert report["rows"] == 1
    rows, tokenizer = render_with_llamafactory(
        tmp_path / "data", "vr", tiny_qwen25vl, work_dir=tmp_path / "lf"
    )

    ep = Episode(record_sample(record), profile, cfg)
    for t in turns:
        ep.step(t)
    ours = processor.apply_chat_template(ep.conversation.messages, tokenize=False)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = [
        t for n, t in enumerate(rows[0]["input_ids"]) if not (t == pad and rows[0]["input_ids"][n - 1] == pad)
    ]
    assert tokenizer.decode(ids, skip_special_tokens=False) == ours
    assert "The mirrored image 2." in ours and '"name": "mirror_image"' in ours


def test_verl_rollout_runs_the_tool_with_the_evaluation_prompts(
    profile, sample_photos, tiny_qwen25vl, tmp_path
):
    """The tool needs no tool-yaml entry: the agent loop builds it from the registry; every prompt the
    rollout sends is, token for token, what evaluation sends after the same turns."""
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl_rig import ANSWER_GT_FIRST, Rig

    from vretrver.engines.render import chat_prompt, conversation_images
    from vretrver.integrations.verl.dataset import RLDataConfig, validate_rl_parquet, write_rl_parquet

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # verl binds this loop at construction
    try:
        rig = Rig("qwen2_5_vl", tiny_qwen25vl, sample_photos, tmp_path, loop)
        rig.parquet = tmp_path / "mirror.parquet"
        data = RLDataConfig(profile=profile, coordinates=rig.coordinates)
        write_rl_parquet(rig.parquet, [rig.sample], data, progress=False)
        assert validate_rl_parquet(rig.parquet)["rows"] == 1
        rig.dataset = RLHFDataset(str(rig.parquet), rig.tok, rig.cfg.data, processor=rig.proc)
        out, server = rig.run([[call(2), ANSWER_GT_FIRST]])
    finally:
        loop.close()
        asyncio.set_event_loop(None)

    rec = out.non_tensor_batch["vretrver_rollout"][0]
    assert (rec["end_reason"], rec["n_valid_calls"], rec["n_invalid_calls"]) == ("answer", 1, 0)
    assert [c["n_images"] for c in server.calls] == [4, 5]
    ep = Episode(rig.sample, profile, ToolConfig.from_processor(rig.proc))
    for n, text in enumerate(rec["turns"]):
        enc = rig.proc(
            text=[chat_prompt(rig.proc, ep.conversation)],
            images=conversation_images(ep.conversation),
            return_tensors="pt",
        )
        assert server.calls[n]["prompt_ids"] == enc["input_ids"][0].tolist()
        ep.step(text)
    assert ep.end_reason == "answer" and "The mirrored image 2." in rig.tok.decode(
        server.calls[1]["prompt_ids"]
    )


def test_a_profile_imports_the_module_that_registers_its_tool(tmp_path, sample_photos):
    """The way a run outside this test process (the CLI, a verl worker) finds the tool: the profile names
    the module, here a file beside its profile.json."""
    folder = tmp_path / "flip-profile"
    folder.mkdir()
    (folder / "flip_tool.py").write_text(
        "from PIL import ImageOps\n"
        "from vretrver.tools import Tool, ToolResult, function_schema, register_tool\n\n"
        "def flip(args, images, cfg):\n"
        "    img, err = images.get(args.get('target_image'))\n"
        "    if err:\n"
        "        return ToolResult('flip_image', False, error=err)\n"
        "    return ToolResult('flip_image', True, images=[ImageOps.flip(img)], indices=[args['target_image']])\n\n"
        "register_tool(Tool('flip_image', flip, function_schema('flip_image', 'Flip an image upside down.',"
        " {'target_image': {'type': 'integer'}}), observation='Image {{ indices[0] }}, flipped.'))\n"
    )
    meta = {"extends": "v-retrver", "name": "flip", "tools": ["flip_image"], "tool_modules": ["flip_tool.py"]}
    (folder / "profile.json").write_text(json.dumps(meta))
    try:
        from verl_rig import make_sample

        ep = Episode(make_sample(sample_photos), str(folder))
        body = json.dumps({"name": "flip_image", "arguments": {"target_image": 1}})
        assert ep.step(f"<think>flip</think><tool_call>{body}</tool_call>").kind == "observation"
        assert ep.turns[-1].text == "<tool_response>\n<image>Image 1, flipped.\n</tool_response>"
    finally:
        unregister_tool("flip_image")


def test_a_profile_listing_an_unregistered_tool_says_so(tmp_path):
    from vretrver.protocol import ProfileError

    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "profile.json").write_text(json.dumps({"extends": "v-retrver", "name": "p", "tools": ["warp"]}))
    with pytest.raises(ProfileError, match=r"no tool named 'warp' is registered.*tool_modules"):
        load_profile(Path(folder))


def test_the_built_in_records_caption_as_the_viewer_always_did():
    def name_of(i):
        return "the query image" if i == 0 else f"candidate {i}"

    crop = describe_call("crop_image", [2], [1, 2, 30, 40], 1, name_of)
    assert crop.heading == "of candidate 2, box [1, 2, 30, 40] (source pixels, padded)"
    assert crop.images == ["the zoomed crop the model saw"] and crop.box == "the box on the source image"
    select = describe_call("select_images", [0, 3], None, 3, name_of)
    assert select.heading == "returned the query image, candidate 3" and select.box is None
    assert select.images == ["the query image", "candidate 3", "image 3"]
    other = describe_call("?", [1], None, 2, name_of)
    assert (other.heading, other.images) == ("returned candidate 1", ["image 1", "image 2"])
    assert describe_call("crop_image", [], None, 0, name_of).heading == ""


def test_the_recipe_tool_yaml_is_the_default_profiles_tool_list():
    import yaml

    from vretrver.integrations.verl.tools import tool_yaml_entries

    recipe = Path(__file__).resolve().parent.parent / "EasyR1" / "configs" / "tools.yaml"
    assert yaml.safe_load(recipe.read_text()) == tool_yaml_entries("v-retrver")
