"""Our verl tool classes, loaded from the recipe's tool yaml, on real images: the same results as
vretrver.tools (the code evaluation runs), in our agent loop and in verl's own ToolAgentLoop."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vretrver.tools import ToolConfig, crop_image, select_images

ROOT = Path(__file__).resolve().parent.parent
TOOL_YAML = ROOT / "EasyR1" / "configs" / "tools.yaml"


@pytest.fixture(scope="module")
def tools():
    from verl.tools.tool_registry import initialize_tools_from_config

    loaded = initialize_tools_from_config(str(TOOL_YAML))
    return {t.name: t for t in loaded}


@pytest.fixture
def run(tools):
    from verl.utils.ray_utils import get_event_loop

    loop = get_event_loop()

    def go(name, args, create_kwargs, **kwargs):
        tool = tools[name]

        async def once():
            iid, _ = await tool.create(create_kwargs=create_kwargs)
            try:
                return await tool.execute(iid, args, **kwargs)
            finally:
                await tool.release(iid)

        return loop.run_until_complete(once())

    return go


def photos_in_prompt(sample_photos):
    # prompt image order: query, candidate 1, candidate 2, candidate 4 (candidate 3 is text only)
    return [Image.open(sample_photos[n]).convert("RGB") for n in ("astronaut", "coffee", "chelsea", "rocket")]


IMAGE_MAP = [0, 1, 2, -1, 3]


def test_yaml_loads_both_tools_with_the_profile_schemas(tools):
    from vretrver.protocol import load_profile

    assert sorted(tools) == ["crop_image", "select_images"]
    schemas = {s["function"]["name"]: s for s in load_profile("v-retrver").tool_schemas("qwen2.5-vl")}
    for name, tool in tools.items():
        assert tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True) == schemas[name]


def test_select_images_returns_the_requested_images_like_vretrver_tools(run, sample_photos):
    from vretrver.tools import image_table

    images = photos_in_prompt(sample_photos)
    table = image_table([images[p] if p >= 0 else None for p in IMAGE_MAP])
    cfg = ToolConfig()
    resp, reward, info = run(
        "select_images", {"target_images": [0, 2, 4]}, {"image_map": IMAGE_MAP}, images=table, tool_config=cfg
    )
    ref = select_images(
        {"target_images": [0, 2, 4]},
        [sample_photos[n] for n in ("astronaut", "coffee", "chelsea")] + [None, sample_photos["rocket"]],
        cfg,
    )
    assert info == {"valid": True, "tool": "select_images", "indices": [0, 2, 4], "error": None}
    assert len(resp.image) == 3 and reward == 0.0
    assert [im.size for im in resp.image] == [im.size for im in ref.images]
    assert [im.tobytes() for im in resp.image] == [im.tobytes() for im in ref.images]
    assert resp.text == "The selected images 0, 2, 4 at high resolution."


def test_crop_image_on_a_real_photo(run, sample_photos):
    images = photos_in_prompt(sample_photos)
    from vretrver.tools import image_table

    table = image_table([images[p] if p >= 0 else None for p in IMAGE_MAP])
    args = {"bbox_2d": [100, 80, 300, 240], "target_image": 2}
    resp, _, info = run("crop_image", args, {"image_map": IMAGE_MAP}, images=table, tool_config=ToolConfig())
    ref = crop_image(args, [None, None, str(sample_photos["chelsea"])], ToolConfig())
    assert info["valid"] and info["indices"] == [2] and len(resp.image) == 1
    assert resp.image[0].size == ref.images[0].size and resp.image[0].tobytes() == ref.images[0].tobytes()
    assert resp.text == "The zoomed region of image 2."


@pytest.mark.parametrize(
    "name, args, error",
    [
        ("select_images", {"target_images": [3]}, "candidate 3 has no image"),
        ("select_images", {"target_images": [0, 1, 2, 4, 1, 0, 2]}, None),  # duplicates collapse to 4
        ("select_images", {"target_images": [9]}, "out of range"),
        ("crop_image", {"bbox_2d": [10, 10, 5, 5], "target_image": 1}, "x1 < x2"),
        ("crop_image", {"bbox_2d": [1, 2, 3]}, "four numbers"),
    ],
)
def test_invalid_calls_return_an_error_text(run, sample_photos, name, args, error):
    from vretrver.tools import image_table

    images = photos_in_prompt(sample_photos)
    table = image_table([images[p] if p >= 0 else None for p in IMAGE_MAP])
    resp, _, info = run(name, args, {"image_map": IMAGE_MAP}, images=table, tool_config=ToolConfig())
    if error is None:
        assert info["valid"] and len(resp.image) == 4
        return
    assert info["valid"] is False and error in info["error"]
    assert resp.image is None and resp.text == f"Error: {info['error']}"


def test_tools_take_the_sample_images_from_verl_agent_data(run, sample_photos):
    """Inside verl's own ToolAgentLoop a tool only gets agent_data: the prompt images are found in its
    messages and mapped through the per-sample image map."""
    images = photos_in_prompt(sample_photos)
    content = [{"type": "text", "text": "Query: "}] + [{"type": "image", "image": im} for im in images]

    class AgentData:
        messages = [{"role": "system", "content": "..."}, {"role": "user", "content": content}]
        image_data = [im.resize((28, 28)) for im in images]  # resized copies: must not be used

    resp, _, info = run(
        "select_images", {"target_images": [4]}, {"image_map": IMAGE_MAP}, agent_data=AgentData()
    )
    full = select_images({"target_images": [0]}, [images[3]], ToolConfig()).images[0]  # the rocket, full size
    assert info["valid"] and resp.image[0].tobytes() == full.tobytes()
