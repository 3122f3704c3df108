"""The visual tools on real photos, against boxes computed by hand, and under adversarial arguments."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import ASTRONAUT, CHELSEA, COFFEE, ROCKET
from PIL import Image

from vretrver.protocol.parser import ToolCall
from vretrver.tools import (
    ToolConfig,
    crop_image,
    image_table,
    run_tool,
    select_images,
    smart_resize,
)

Q25 = ToolConfig()  # qwen2.5-vl: pixels of the smart-resized image
Q3 = ToolConfig(coordinates="qwen3-vl")  # 0-1000


def photo(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def crop(box, path: str, cfg: ToolConfig):
    # Index 0 is the query image, 1 the first candidate: the photo is candidate 1 here.
    return crop_image({"bbox_2d": box, "target_image": 1}, [None, path], cfg)


def assert_out_bounds(img: Image.Image, cfg: ToolConfig = Q25) -> None:
    w, h = img.size
    assert w % cfg.out_factor == 0 and h % cfg.out_factor == 0
    assert cfg.out_min_pixels <= w * h <= cfg.out_max_pixels


def test_the_photos_have_the_sizes_the_hand_computations_assume():
    assert photo(ASTRONAUT).size == (512, 512)
    assert photo(CHELSEA).size == (451, 300)
    assert photo(COFFEE).size == (600, 400)


def test_smart_resize_by_hand():
    # Default processor bounds (28 px, 3136 .. 12845056 px): round each side to a multiple of 28.
    # 512 / 28 = 18.29 -> 18 * 28 = 504;  300 / 28 = 10.71 -> 11 -> 308;  451 / 28 = 16.11 -> 16 -> 448;
    # 400 / 28 = 14.29 -> 14 -> 392;  600 / 28 = 21.43 -> 21 -> 588.
    assert smart_resize(512, 512, 28, 3136, 12845056) == (504, 504)
    assert smart_resize(300, 451, 28, 3136, 12845056) == (308, 448)
    assert smart_resize(400, 600, 28, 3136, 12845056) == (392, 588)
    # Above the output cap (4,014,080 px): 3000 x 2000 = 6 M px, beta = sqrt(6e6 / 4014080) = 1.2226,
    # 2000 / 1.2226 / 28 = 58.4 -> 58 * 28 = 1624;  3000 / 1.2226 / 28 = 87.6 -> 87 * 28 = 2436.
    assert smart_resize(2000, 3000, 28, 3136, 4014080) == (1624, 2436)
    # Below the floor (3136 px): 30 x 20, beta = sqrt(3136 / 600) = 2.286,
    # ceil(30 * 2.286 / 28) = 3 -> 84;  ceil(20 * 2.286 / 28) = 2 -> 56.
    assert smart_resize(30, 20, 28, 3136, 4014080) == (84, 56)


# Each case: box as the model writes it, the convention, the photo, the hand-computed padded box in
# original pixels, and the hand-computed output size (width, height).
CROP_CASES = [
    # astronaut 512 x 512 is seen as 504 x 504: scale 512 / 504. [126, 252, 252, 378] -> [128, 256, 256, 384];
    # pad 51.2 px each side -> [76.8, 204.8, 307.2, 435.2] -> floor / ceil -> (76, 204, 308, 436),
    # 232 x 232 -> round(232 / 28) = 8 -> 224 x 224.
    pytest.param([126, 252, 252, 378], Q25, ASTRONAUT, (76, 204, 308, 436), (224, 224), id="astronaut-q25"),
    # qwen3-vl: [250, 500, 500, 750] / 1000 * 512 = [128, 256, 256, 384]: the same region.
    pytest.param([250, 500, 500, 750], Q3, ASTRONAUT, (76, 204, 308, 436), (224, 224), id="astronaut-q3"),
    # normalised [0, 1]: 0.25 * 512 = 128 ...: the same region again, under either convention.
    pytest.param(
        [0.25, 0.5, 0.5, 0.75], Q25, ASTRONAUT, (76, 204, 308, 436), (224, 224), id="astronaut-norm-q25"
    ),
    pytest.param(
        [0.25, 0.5, 0.5, 0.75], Q3, ASTRONAUT, (76, 204, 308, 436), (224, 224), id="astronaut-norm-q3"
    ),
    # chelsea 451 x 300 is seen as 448 x 308. x: 100 * 451 / 448 = 100.67 - 45.1 = 55.57 -> 55;
    # 300 * 451 / 448 = 302.01 + 45.1 = 347.11 -> 348. y: 50 * 300 / 308 = 48.70 - 30 = 18.70 -> 18;
    # 200 * 300 / 308 = 194.81 + 30 = 224.81 -> 225. Crop 293 x 207 -> 10 * 28 x 7 * 28 = 280 x 196.
    pytest.param([100, 50, 300, 200], Q25, CHELSEA, (55, 18, 348, 225), (280, 196), id="chelsea-q25"),
    # qwen3-vl: x 210 * 0.451 = 94.71 - 45.1 = 49.61 -> 49; 610 * 0.451 = 275.11 + 45.1 = 320.21 -> 321;
    # y 333 * 0.3 = 99.9 - 30 = 69.9 -> 69; 711 * 0.3 = 213.3 + 30 = 243.3 -> 244. 272 x 175 -> 280 x 168.
    pytest.param([210, 333, 610, 711], Q3, CHELSEA, (49, 69, 321, 244), (280, 168), id="chelsea-q3"),
    # coffee 600 x 400 is seen as 588 x 392. x: 150 * 600 / 588 = 153.06 - 60 = 93.06 -> 93;
    # 450 * 600 / 588 = 459.18 + 60 = 519.18 -> 520. y: 100 * 400 / 392 = 102.04 - 40 = 62.04 -> 62;
    # 300 * 400 / 392 = 306.12 + 40 = 346.12 -> 347. 427 x 285 -> 15 * 28 x 10 * 28 = 420 x 280.
    pytest.param([150, 100, 450, 300], Q25, COFFEE, (93, 62, 520, 347), (420, 280), id="coffee-q25"),
    # normalised: x 0.123 * 600 = 73.8 - 60 = 13.8 -> 13; 0.471 * 600 = 282.6 + 60 = 342.6 -> 343;
    # y 0.234 * 400 = 93.6 - 40 = 53.6 -> 53; 0.617 * 400 = 246.8 + 40 = 286.8 -> 287. 330 x 234 -> 336 x 224.
    pytest.param(
        [0.123, 0.234, 0.471, 0.617], Q25, COFFEE, (13, 53, 343, 287), (336, 224), id="coffee-norm-q25"
    ),
    pytest.param(
        [0.123, 0.234, 0.471, 0.617], Q3, COFFEE, (13, 53, 343, 287), (336, 224), id="coffee-norm-q3"
    ),
    # Clamping: a box at the top-left corner; the padding would go to -51.2. 50 * 512 / 504 = 50.79 + 51.2
    # = 101.99 -> 102. 102 x 102 -> round(3.64) = 4 -> 112 x 112.
    pytest.param([0, 0, 50, 50], Q25, ASTRONAUT, (0, 0, 102, 102), (112, 112), id="clamp-top-left"),
    # Bottom-right corner: 460 * 512 / 504 = 467.30 - 51.2 = 416.10 -> 416; 470 -> 477.46 - 51.2 -> 426;
    # the far edge 504 -> 512 + 51.2 clamps to 512. 96 x 86 -> 3 * 28 x 3 * 28 = 84 x 84.
    pytest.param(
        [460, 470, 504, 504], Q25, ASTRONAUT, (416, 426, 512, 512), (84, 84), id="clamp-bottom-right"
    ),
    # Slightly past the edge (520 of 504, within the 5 % tolerance) is clamped, not refused.
    pytest.param([460, 470, 520, 504], Q25, ASTRONAUT, (416, 426, 512, 512), (84, 84), id="clamp-overshoot"),
]


@pytest.mark.parametrize("box, cfg, path, expected_box, expected_size", CROP_CASES)
def test_crop_matches_hand_computed_box(box, cfg, path, expected_box, expected_size):
    r = crop(box, path, cfg)
    assert r.valid and r.error is None
    assert r.tool == "crop_image" and r.indices == [1]
    assert r.box == expected_box
    assert len(r.images) == 1
    out = r.images[0]
    assert out.size == expected_size
    assert_out_bounds(out, cfg)


def _mean_abs_diff(a: Image.Image, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize("box, cfg, path, expected_box, expected_size", CROP_CASES[:9])
def test_crop_pixels_are_the_source_region(box, cfg, path, expected_box, expected_size):
    src = np.asarray(photo(path))
    r = crop(box, path, cfg)
    x1, y1, x2, y2 = expected_box
    # Resize the returned crop back to the region's size: it must look like that region of the photo ...
    back = r.images[0].resize((x2 - x1, y2 - y1), Image.BICUBIC)
    same = _mean_abs_diff(back, src[y1:y2, x1:x2])
    assert same < 8.0
    # ... and clearly unlike the region 40 px to the side (the check can tell them apart).
    h, w = src.shape[:2]
    dx = 40 if x2 + 40 <= w else -40
    shifted = _mean_abs_diff(back, src[y1:y2, x1 + dx : x2 + dx])
    assert shifted > 2 * same + 4


def test_crop_of_a_coloured_patch_returns_that_colour():
    # A grey canvas with a pure red square: the crop around it holds exactly red and grey, in proportion.
    canvas = np.full((400, 600, 3), 128, np.uint8)
    canvas[100:200, 250:350] = (255, 0, 0)
    img = Image.fromarray(canvas)
    r = crop_image({"bbox_2d": [250 / 600, 100 / 400, 350 / 600, 200 / 400], "target_image": 0}, [img], Q25)
    # 250 - 60 = 190, 350 + 60 = 410, 100 - 40 = 60, 200 + 40 = 240.
    assert r.box == (190, 60, 410, 240)
    out = np.asarray(r.images[0].resize((220, 180), Image.NEAREST)).astype(int)
    centre = out[40 + 20 : 140 - 20, 60 + 20 : 160 - 20]
    assert (np.abs(centre - (255, 0, 0)) <= 2).all()
    assert (np.abs(out[:20, :] - 128) <= 2).all()  # above the square: padding, grey


def test_padding_is_capped_at_600_pixels():
    # 6500 px wide: 10 % would be 650 px; the cap makes it 600. 400 px high: 40 px, no cap.
    big = Image.new("RGB", (6500, 400), (10, 20, 30))
    r = crop_image({"bbox_2d": [0.5013, 0.2513, 0.6007, 0.7507], "target_image": 0}, [big], Q25)
    # x: 0.5013 * 6500 = 3258.45 - 600 = 2658.45 -> 2658; 0.6007 * 6500 = 3904.55 + 600 = 4504.55 -> 4505;
    # y: 0.2513 * 400 = 100.52 - 40 = 60.52 -> 60; 0.7507 * 400 = 300.28 + 40 = 340.28 -> 341.
    assert r.valid and r.box == (2658, 60, 4505, 341)
    # 1847 x 281 -> round(65.96) = 66 * 28 x round(10.04) = 10 * 28.
    assert r.images[0].size == (1848, 280)


def test_padding_follows_the_config():
    r = crop([126, 252, 252, 378], ASTRONAUT, ToolConfig(pad_max=10))
    assert r.box == (118, 246, 266, 394)  # [128, 256, 256, 384] padded by 10 px
    r = crop([126, 252, 252, 378], ASTRONAUT, ToolConfig(pad_fraction=0.0))
    assert r.box == (128, 256, 256, 384)


def test_crop_output_never_below_the_pixel_floor():
    tiny = Image.new("RGB", (40, 30), (200, 100, 50))
    r = crop_image({"bbox_2d": [0, 0, 1, 1], "target_image": 0}, [tiny], Q25)
    assert r.valid and r.box == (0, 0, 40, 30)
    # 40 x 30 = 1200 px < 3136: scaled up to 84 x 56 (see test_smart_resize_by_hand).
    assert r.images[0].size == (84, 56)
    assert_out_bounds(r.images[0])


def test_select_images_returns_whole_images_within_bounds():
    big = Image.new("RGB", (3000, 2000), (1, 2, 3))
    imgs = [ASTRONAUT, CHELSEA, COFFEE, big]
    r = select_images({"target_images": [0, 1, 3]}, imgs, Q25)
    assert r.valid and r.indices == [0, 1, 3] and r.tool == "select_images"
    assert [im.size for im in r.images] == [(504, 504), (448, 308), (2436, 1624)]
    for im in r.images:
        assert_out_bounds(im)
    # Whole image: the returned chelsea resized back equals the photo.
    back = r.images[1].resize((451, 300), Image.BICUBIC)
    assert _mean_abs_diff(back, np.asarray(photo(CHELSEA))) < 5.0


def test_select_images_accepts_a_single_index_and_drops_repeats():
    r = select_images({"target_images": 2}, [ASTRONAUT, CHELSEA, COFFEE], Q25)
    assert r.valid and r.indices == [2] and len(r.images) == 1
    r = select_images({"target_images": [2, 1, 2, 1]}, [ASTRONAUT, CHELSEA, COFFEE], Q25)
    assert r.valid and r.indices == [2, 1] and len(r.images) == 2


def test_image_table_loads_each_file_once(monkeypatch):
    import vretrver.tools as tools

    opened = []
    real = tools.load_image
    monkeypatch.setattr(tools, "load_image", lambda x: opened.append(x) or real(x))
    table = image_table([ASTRONAUT, CHELSEA])
    for _ in range(3):
        assert crop_image({"bbox_2d": [0.1, 0.1, 0.5, 0.5], "target_image": 1}, table, Q25).valid
        assert select_images({"target_images": [0, 1]}, table, Q25).valid
    assert opened == [CHELSEA, ASTRONAUT]


# ------------------------------------------------------------------ adversarial arguments


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    broken = folder / "broken.png"
    broken.write_bytes(Path(ASTRONAUT).read_bytes()[:3000])  # a truncated PNG
    not_image = folder / "notes.png"
    not_image.write_text("not an image")
    # 0: query image, 1: chelsea, 2: a text-only candidate, 3: truncated file, 4: text file, 5: missing file
    return [ASTRONAUT, CHELSEA, None, str(broken), str(not_image), str(folder / "missing.png")]


BAD_CROPS = {
    "negative": {"bbox_2d": [-10, 5, 50, 60], "target_image": 1},
    "inverted": {"bbox_2d": [200, 150, 100, 50], "target_image": 1},
    "inverted-y": {"bbox_2d": [10, 150, 100, 50], "target_image": 1},
    "zero-area": {"bbox_2d": [100, 100, 100, 200], "target_image": 1},
    "zero-area-normalised": {"bbox_2d": [0.5, 0.2, 0.5, 0.8], "target_image": 1},
    "nan": {"bbox_2d": [float("nan"), 0, 100, 100], "target_image": 1},
    "inf": {"bbox_2d": [0, 0, float("inf"), 100], "target_image": 1},
    "-inf": {"bbox_2d": [float("-inf"), 0, 100, 100], "target_image": 1},
    "strings": {"bbox_2d": ["10", "20", "30", "40"], "target_image": 1},
    "string-box": {"bbox_2d": "[10, 20, 30, 40]", "target_image": 1},
    "bools": {"bbox_2d": [True, False, True, True], "target_image": 1},
    "three-values": {"bbox_2d": [10, 20, 30], "target_image": 1},
    "five-values": {"bbox_2d": [10, 20, 30, 40, 50], "target_image": 1},
    "nested": {"bbox_2d": [[10, 20], [30, 40]], "target_image": 1},
    "null-box": {"bbox_2d": None, "target_image": 1},
    "huge-float": {"bbox_2d": [0, 0, 1e300, 1e300], "target_image": 1},
    "huge-int": {"bbox_2d": [0, 0, 10**400, 100], "target_image": 1},
    "outside": {"bbox_2d": [1200, 10, 1300, 100], "target_image": 1},
    # Past the far edge by more than the 5 % tolerance in both conventions (448 px seen; 1000).
    "past-edge": {"bbox_2d": [10, 10, 1060, 100], "target_image": 1},
    "index-out-of-range": {"bbox_2d": [10, 10, 100, 100], "target_image": 9},
    "index-negative": {"bbox_2d": [10, 10, 100, 100], "target_image": -1},
    "index-huge": {"bbox_2d": [10, 10, 100, 100], "target_image": 10**30},
    "index-string": {"bbox_2d": [10, 10, 100, 100], "target_image": "1"},
    "index-float": {"bbox_2d": [10, 10, 100, 100], "target_image": 1.5},
    "index-bool": {"bbox_2d": [10, 10, 100, 100], "target_image": True},
    "index-list": {"bbox_2d": [10, 10, 100, 100], "target_image": [1]},
    "index-path": {"bbox_2d": [10, 10, 100, 100], "target_image": "/etc/passwd"},
    "text-only-candidate": {"bbox_2d": [10, 10, 100, 100], "target_image": 2},
    "truncated-file": {"bbox_2d": [0.1, 0.1, 0.5, 0.5], "target_image": 3},
    "not-an-image": {"bbox_2d": [0.1, 0.1, 0.5, 0.5], "target_image": 4},
    "missing-file": {"bbox_2d": [0.1, 0.1, 0.5, 0.5], "target_image": 5},
    "missing-box": {"target_image": 1},
    "missing-index": {"bbox_2d": [10, 10, 100, 100]},
    "empty": {},
}


@pytest.mark.parametrize("name", list(BAD_CROPS))
@pytest.mark.parametrize("cfg", [Q25, Q3], ids=["q25", "q3"])
def test_bad_crop_arguments_give_an_error(images, name, cfg):
    r = crop_image(BAD_CROPS[name], images, cfg)
    assert r.valid is False
    assert isinstance(r.error, str) and r.error.strip()
    assert r.images == [] and r.box is None
    # The same through run_tool (the path the episode takes).
    r2 = run_tool(ToolCall("crop_image", BAD_CROPS[name], "raw"), images, cfg)
    assert r2.valid is False and r2.error == r.error


def test_crop_error_texts_say_what_is_wrong(images):
    def err(args, cfg=Q25, imgs=images):
        return crop_image(args, imgs, cfg).error

    assert "negative" in err(BAD_CROPS["negative"])
    assert "x1 < x2" in err(BAD_CROPS["inverted"])
    assert "outside" in err(BAD_CROPS["outside"])
    assert "out of range" in err(BAD_CROPS["index-out-of-range"])
    assert "integer" in err(BAD_CROPS["index-path"])
    assert err(BAD_CROPS["text-only-candidate"]) == "candidate 2 has no image"
    assert "could not be read" in err(BAD_CROPS["truncated-file"])
    assert (
        err({"bbox_2d": [1, 1, 50, 50], "target_image": 0}, imgs=[None, CHELSEA]) == "the query has no image"
    )


def test_query_without_image(images):
    imgs = [None, CHELSEA]
    assert (
        crop_image({"bbox_2d": [1, 1, 50, 50], "target_image": 0}, imgs, Q25).error
        == "the query has no image"
    )
    r = select_images({"target_images": [0, 1]}, imgs, Q25)
    assert not r.valid and r.error == "the query has no image"


BAD_SELECTS = {
    "five-images": {"target_images": [0, 1, 2, 3, 4]},
    "empty-list": {"target_images": []},
    "strings": {"target_images": ["1", "2"]},
    "string": {"target_images": "1, 2"},
    "bools": {"target_images": [True, False]},
    "bool": {"target_images": True},
    "floats": {"target_images": [1.0, 2.0]},
    "nested": {"target_images": [[0, 1]]},
    "nan": {"target_images": [float("nan")]},
    "out-of-range": {"target_images": [1, 99]},
    "negative": {"target_images": [-1]},
    "huge": {"target_images": [10**30]},
    "path": {"target_images": ["/etc/passwd"]},
    "text-only": {"target_images": [1, 2]},
    "truncated-file": {"target_images": [3]},
    "not-an-image": {"target_images": [4]},
    "missing-file": {"target_images": [5]},
    "null": {"target_images": None},
    "dict": {"target_images": {"0": 1}},
    "missing": {},
    "wrong-key": {"images": [0, 1]},
}


@pytest.mark.parametrize("name", list(BAD_SELECTS))
def test_bad_select_arguments_give_an_error(images, name):
    # Five distinct valid indices exist here, so "five-images" fails on the count, not on a missing image.
    imgs = images if name != "five-images" else [ASTRONAUT, CHELSEA, COFFEE, ASTRONAUT, CHELSEA]
    r = select_images(BAD_SELECTS[name], imgs, Q25)
    assert r.valid is False and isinstance(r.error, str) and r.error.strip()
    assert r.images == []


def test_four_images_is_the_limit():
    imgs = [ASTRONAUT, CHELSEA, COFFEE, ASTRONAUT, CHELSEA]
    assert select_images({"target_images": [0, 1, 2, 3]}, imgs, Q25).valid
    r = select_images({"target_images": [0, 1, 2, 3, 4]}, imgs, Q25)
    assert not r.valid and "at most 4" in r.error
    assert select_images({"target_images": [0, 1, 2, 3, 4]}, imgs, ToolConfig(max_select=5)).valid


@pytest.mark.parametrize("args", [None, [1, 2], "target_images", 5, 1.5, True])
@pytest.mark.parametrize("tool", ["select_images", "crop_image"])
def test_non_dict_arguments(images, tool, args):
    r = run_tool(ToolCall(tool, args, "raw"), images, Q25)
    assert r.valid is False and r.error


def test_unknown_tool_and_tools_outside_the_profile(images):
    r = run_tool(ToolCall("delete_files", {"path": "/"}, "raw"), images, Q25)
    assert not r.valid and "unknown tool" in r.error and "select_images" in r.error
    r = run_tool(ToolCall(None, None, "raw"), images, Q25)
    assert not r.valid and r.error
    # A known tool that the profile does not offer is unknown to the model.
    call = ToolCall("crop_image", {"bbox_2d": [0.1, 0.1, 0.5, 0.5], "target_image": 1}, "raw")
    r = run_tool(call, images, Q25, allowed=["select_images"])
    assert not r.valid and "unknown tool" in r.error


def test_a_parse_error_is_passed_on(images):
    r = run_tool(ToolCall(None, None, "{oops", error="the tool call is not valid JSON"), images, Q25)
    assert not r.valid and r.error == "the tool call is not valid JSON"


def test_model_output_never_becomes_a_file_path(images, monkeypatch):
    import builtins

    opened: list[str] = []
    real_open = Image.open
    real_builtin_open = builtins.open

    def spy(fp, *a, **k):
        opened.append(str(fp))
        return real_open(fp, *a, **k)

    def spy_builtin(fp, *a, **k):
        opened.append(str(fp))
        return real_builtin_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", spy)
    monkeypatch.setattr(builtins, "open", spy_builtin)
    calls = [
        ToolCall("crop_image", {"bbox_2d": [0, 0, 10, 10], "target_image": "/etc/passwd"}, "raw"),
        ToolCall("select_images", {"target_images": ["/etc/passwd", "../../etc/shadow"]}, "raw"),
        ToolCall("select_images", {"target_images": "/etc/passwd"}, "raw"),
        ToolCall("crop_image", {"bbox_2d": "/etc/passwd", "target_image": 1}, "raw"),
    ]
    for call in calls:
        r = run_tool(call, images, Q25)
        assert not r.valid and r.error
    assert opened == []  # nothing was opened at all: every call failed before touching a file


SMALL = [Image.new("RGB", (90, 60), (90, 10, 200)), Image.new("RGB", (50, 120), (0, 255, 0))]

# Arbitrary JSON values in the argument slots: the tools answer every one with images or an error text.
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
_coord = st.one_of(
    st.integers(-50, 1200),
    st.floats(-2, 1200, allow_nan=False),
    st.floats(),
    st.booleans(),
    st.text(max_size=3),
)
_args = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"bbox_2d": st.lists(_coord, min_size=3, max_size=5), "target_image": _json | st.integers(-2, 8)}
    ),
    st.fixed_dictionaries({"target_images": st.lists(st.integers(-2, 8) | _json, max_size=6) | _json}),
)


@settings(max_examples=1000, deadline=None, database=None)
@given(name=st.sampled_from(["select_images", "crop_image", "other"]), args=_args)
def test_tools_never_raise_on_arbitrary_arguments(name, args):
    imgs = [None, SMALL[0], None, SMALL[1], SMALL[0]]
    for cfg in (Q25, Q3):
        r = run_tool(ToolCall(name, args, "raw"), imgs, cfg)
        if r.valid:
            assert r.error is None and r.images and len(r.images) == len(r.indices)
            for im in r.images:
                assert_out_bounds(im, cfg)
            if r.box is not None:
                x1, y1, x2, y2 = r.box
                w, h = SMALL[0].size if r.indices[0] in (1, 4) else SMALL[1].size
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        else:
            assert isinstance(r.error, str) and r.error.strip() and r.images == []
        # An error from inside a tool body would show as "the tool failed": none may happen.
        assert not (r.error or "").startswith("the tool failed")


def test_tool_config_rejects_an_unknown_convention():
    with pytest.raises(ValueError, match="coordinates"):
        ToolConfig(coordinates="pixels")


def test_tool_config_from_a_processor_like_object():
    class IP:
        patch_size = 16
        merge_size = 2
        min_pixels = 1024
        max_pixels = 65536

    class Qwen3VLProcessor:
        image_processor = IP()

    cfg = ToolConfig.from_processor(Qwen3VLProcessor())
    assert (cfg.coordinates, cfg.factor, cfg.min_pixels, cfg.max_pixels) == ("qwen3-vl", 32, 1024, 65536)

    class Qwen2_5_VLProcessor:
        image_processor = type(
            "IP2",
            (),
            {"patch_size": 14, "merge_size": 2, "size": {"shortest_edge": 3136, "longest_edge": 1003520}},
        )()

    cfg = ToolConfig.from_processor(Qwen2_5_VLProcessor())
    assert (cfg.coordinates, cfg.factor, cfg.min_pixels, cfg.max_pixels) == ("qwen2.5-vl", 28, 3136, 1003520)
    # The processor's bounds define what "pixels as the model saw it" means: 1003520 px caps astronaut at
    # 504 x 504 still (254016 px), so the same box gives the same crop.
    assert crop([126, 252, 252, 378], ASTRONAUT, cfg).box == (76, 204, 308, 436)


def test_qwen25_coordinates_follow_the_processor_resize():
    # With max_pixels 65536 the 512 x 512 astronaut is seen as 252 x 252 (beta = sqrt(262144 / 65536) = 2,
    # 512 / 2 / 28 = 9.14 -> 9 * 28 = 252): box [63, 126, 126, 189] is [128, 256, 256, 384] in the original.
    cfg = ToolConfig(max_pixels=65536)
    assert smart_resize(512, 512, 28, 3136, 65536) == (252, 252)
    assert crop([63, 126, 126, 189], ASTRONAUT, cfg).box == (76, 204, 308, 436)
    assert math.isclose(512 / 252 * 63, 128)


def test_an_oversized_image_is_an_error_not_a_crash(monkeypatch):
    # PIL refuses images above twice MAX_IMAGE_PIXELS (a decompression bomb): an error text, not a crash.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    r = select_images({"target_images": [1]}, [None, ASTRONAUT], Q25)
    assert not r.valid and r.error == "image 1 could not be read"
    r = crop_image({"bbox_2d": [0.1, 0.1, 0.5, 0.5], "target_image": 1}, [None, ASTRONAUT], Q25)
    assert not r.valid and r.error == "image 1 could not be read"


def test_tools_see_a_phone_photo_upright(tmp_path):
    # The rocket (640 x 427) saved as a phone does: stored sideways, EXIF orientation 6 ("turn 90 degrees
    # clockwise to view"). Upright it is 427 wide and 640 high, as the model is shown it.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    photo(ROCKET).save(path, quality=90, exif=exif)
    r = select_images({"target_images": [1]}, [None, str(path)], Q25)
    # Output bounds: 640 / 28 = 22.9 -> 23 * 28 = 644 high; 427 / 28 = 15.3 -> 15 * 28 = 420 wide.
    assert r.valid and r.images[0].size == (420, 644)
    # A box over the top quarter, left half, of the upright picture: [0, 0, 213.5, 160] in its pixels,
    # padded by 10 % (42.7 and 64 px): (0, 0, ceil(256.2), 224).
    r = crop_image({"bbox_2d": [0, 0, 0.5, 0.25], "target_image": 1}, [None, str(path)], Q25)
    assert r.valid and r.box == (0, 0, 257, 224)


def test_tools_work_on_a_capped_copy_of_a_huge_image(tmp_path, monkeypatch):
    from vretrver.images import MAX_PIXELS_ENV

    # Under a cap of 100,000 px a 1200 x 900 image loads as 365 x 273 (scale sqrt(100000 / 1080000)),
    # once per sample; crops are cut from that copy, as the model is shown it.
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    path = tmp_path / "huge.png"
    Image.new("RGB", (1200, 900), (200, 40, 40)).save(path)
    imgs = image_table([None, str(path)])
    r = crop_image({"bbox_2d": [0, 0, 1, 1], "target_image": 1}, imgs, Q25)
    assert r.valid and r.box == (0, 0, 365, 273)
    assert select_images({"target_images": [1]}, imgs, Q25).valid
