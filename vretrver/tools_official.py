"""The public release's tool server, restated: the ``official`` tool dialect (:class:`vretrver.tools.ToolConfig`).

Strict JSON between the tags, its checks in its order, its error texts, any number of images with repeats
kept, and its crop geometry (:func:`vretrver.tools.official_crop_region`: boxes in pixels of the image
file, clamped rather than rejected). The resizing of returned images is ours.

The server knows only the release's tools: a tool registered in :mod:`vretrver.tools` runs in our dialect
(``v-retrver``) and is an unknown name here, as it would be to the release's server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vretrver.tools import (
    ImageTable,
    ToolConfig,
    ToolResult,
    official_crop_region,
    resize_for_model,
    tool_error,
)

if TYPE_CHECKING:
    from vretrver.protocol.parser import ToolCall

# The names the official server runs (select_frames, which it also knows, is not one of our tools).
_OFFICIAL_NAMES = {
    "crop_image": "crop_image",
    "zoom_in": "crop_image",
    "crop_image_normalized": "crop_image",
    "select_images": "select_images",
}
_NO_IMAGES = "No images available. Please ensure query_image or candidate_images are provided in extra_field."
_NO_QUERY_IMAGE = (
    "Query image does not exist. Please do not choose query image again and analyze based on query text."
)
_NO_CANDIDATE_IMAGES = (
    "Candidate images do not exist. Please do not choose candidate images again and analyze based on "
    "candidates' text."
)


def _out_of_range(n: int) -> str:
    return (
        "Invalid target_images indices. Each index should be an integer equal to 0 for the query image "
        f"or between 1 and the number of candidate images ({n}) for candidate images."
    )


def official_call(call: ToolCall, allowed: Sequence[str]) -> tuple[str, Any] | ToolResult:
    """The call as the official server reads it: the JSON between the tags, strictly; a name it knows; an
    ``arguments`` object. A call it cannot read gets an empty error text (the agent loop adds its prefix).

    A call built by a tool framework (no raw text) is taken with the name and arguments it was given.
    """
    if not call.raw and call.arguments is not None:
        name, args = call.name, call.arguments
        obj: Any = {"name": name, "arguments": args}
    else:
        try:
            obj = json.loads(call.raw)
            name = obj.get("name", "")
        except (ValueError, RecursionError, AttributeError):
            return tool_error(call.name, "")
    tool = _OFFICIAL_NAMES.get(name) if isinstance(name, str) else None
    if tool is None or tool not in allowed:
        return tool_error(name if isinstance(name, str) else None, "")
    if "arguments" not in obj:
        return tool_error(tool, "Missing 'arguments' in the tool call.")
    args = obj["arguments"]
    if not isinstance(args, dict):
        return tool_error(
            tool, f"'arguments' should be a dictionary of parameters key-value pairs, got {type(args)}."
        )
    return tool, args


def official_select(args: dict[str, Any], imgs: ImageTable, cfg: ToolConfig) -> ToolResult:
    def fail(msg: str) -> ToolResult:
        return tool_error("select_images", msg)

    if "target_images" not in args:
        return fail("Missing parameters: target_images")
    targets = args["target_images"]
    if not isinstance(targets, list):
        return fail("Invalid target_images format. It should be a list of integers.")
    n = len(imgs) - 1
    has_query, has_candidates = imgs.has(0), any(imgs.has(k) for k in range(1, n + 1))
    if not has_query and not has_candidates:
        return fail(_NO_IMAGES)
    problems = []
    for idx in targets:  # the server checks every index and reports all problems at once
        if not isinstance(idx, int):
            problems.append(f"Index {idx} is not an integer")
        elif idx == 0 and not has_query:
            problems.append(f"Index {idx}: {_NO_QUERY_IMAGE}")
        elif idx != 0 and not has_candidates:
            problems.append(f"Index {idx}: {_NO_CANDIDATE_IMAGES}")
        elif idx != 0 and not 1 <= idx <= n:
            problems.append(f"Index {idx}: {_out_of_range(n)}")
    if problems:
        return fail("Invalid indices found: " + "; ".join(problems))
    if not targets:  # the server then fails on the first image of an empty list
        return fail("Error processing images: list index out of range")
    out = []
    for idx in targets:  # repeats are returned again, and there is no cap on the number
        img, err = imgs.get(int(idx))
        if err:
            return fail(f"Error processing images: {err}")
        out.append(resize_for_model(img, cfg))
    return ToolResult(tool="select_images", valid=True, images=out, indices=[int(i) for i in targets])


def official_crop(args: dict[str, Any], imgs: ImageTable, cfg: ToolConfig) -> ToolResult:
    def fail(msg: str) -> ToolResult:
        return tool_error("crop_image", msg)

    missing = [k for k in ("bbox_2d", "target_image") if k not in args]
    ti = args.get("target_image")
    with contextlib.suppress(TypeError, ValueError, OverflowError):
        ti = int(ti)  # the server reads the index with int(): "3" -> 3, 2.7 -> 2
    if missing:
        return fail(f"Missing parameters: {', '.join(missing)}")
    box = args["bbox_2d"]
    if not isinstance(box, list) or len(box) != 4:
        return fail("Invalid bbox_2d format. It should be a list of four numbers.")
    n = len(imgs) - 1
    has_query, has_candidates = imgs.has(0), any(imgs.has(k) for k in range(1, n + 1))
    if not has_query and not has_candidates:
        return fail(_NO_IMAGES)
    if not isinstance(ti, int):
        return fail("Invalid target_image format. It should be an integer.")
    if ti == 0 and not has_query:
        return fail(_NO_QUERY_IMAGE)
    if ti != 0 and not has_candidates:
        return fail(_NO_CANDIDATE_IMAGES)
    if ti != 0 and not 1 <= ti <= n:
        return fail(_out_of_range(n))
    img, err = imgs.get(ti)
    if err:
        return fail(f"Error processing image: {err}")
    region = official_crop_region(box, *img.size)
    if isinstance(region, str):  # the server reports a failed crop with its exception text; ours says why
        return fail(f"Error processing image: {region}")
    crop = resize_for_model(img.crop(region), cfg)
    return ToolResult(tool="crop_image", valid=True, images=[crop], indices=[ti], box=region)


OFFICIAL_TOOLS = {"select_images": official_select, "crop_image": official_crop}


def run_official(name: str, args: dict[str, Any], imgs: ImageTable, cfg: ToolConfig) -> ToolResult:
    """Run a call :func:`official_call` accepted, as the release's server does."""
    return OFFICIAL_TOOLS[name](args, imgs, cfg)
