"""The built-in visual tools, ``select_images`` and ``crop_image``, their records in the tool registry
(:mod:`vretrver.tool_registry`, re-exported here), and the dispatch of a parsed call to its tool.

Tools are pure functions over the images of one sample: image index 0 is the query image, index k is
candidate k's image. A tool returns a :class:`ToolResult` with images, or with a short error text; it never
raises on model output, and model output never becomes a file path (only an index into the sample's own
images).

Crop coordinates follow the model family (:attr:`ToolConfig.coordinates`):

* ``"qwen2.5-vl"``: absolute pixels of the image as the processor resized it (smart resize);
* ``"qwen3-vl"``: relative coordinates from 0 to 1000;
* either way, a box whose four values all lie in [0, 1] is read as normalised coordinates.

The box is padded by 10 % of the image width / height on each side (at most 600 px), clamped to the image,
cropped from the original image, and the crop is smart-resized to multiples of 28 px within
[3136, 4,014,080] pixels; ``select_images`` returns whole images under the same bounds.

``ToolConfig.dialect`` (set from the prompt profile) says whose tool server the tools imitate: ``v-retrver``
(ours: tolerant reading of the call, at most ``max_select`` distinct images, our error texts) or
``official`` (the public release's server, restated in :mod:`vretrver.tools_official`: strict JSON, its
checks in its order, its error texts, any number of images, repeats kept, and its crop geometry: boxes in
pixels of the image file, clamped rather than rejected; it knows only the release's two tools). The
resizing of returned images is ours in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from PIL import Image

from vretrver.images import load_image, to_rgb  # noqa: F401 - re-exported for older imports
from vretrver.tool_registry import (  # noqa: F401 - the registry's names, re-exported
    _REGISTRY,
    CallCaption,
    Tool,
    ToolCaption,
    ToolError,
    describe_call,
    function_schema,
    get_tool,
    register_tool,
    registered_tools,
    unregister_tool,
)

if TYPE_CHECKING:  # at run time the protocol package imports this module (profiles read the registry)
    from vretrver.protocol.conversation import ImageLike
    from vretrver.protocol.parser import ToolCall

COORDINATES = ("qwen2.5-vl", "qwen3-vl")
TOOL_NAMES = ("select_images", "crop_image")  # the built-in tools, the default set a call may use
DIALECTS = ("v-retrver", "official")
# Boxes may overshoot the image edge by this fraction before they count as outside it (then clamped).
EDGE_TOLERANCE = 0.05


@dataclass(frozen=True)
class ToolConfig:
    coordinates: str = "qwen2.5-vl"
    # How the processor resizes input images: what "pixels of the image as the model saw it" refers to.
    factor: int = 28
    min_pixels: int = 3136
    max_pixels: int = 12845056
    pad_fraction: float = 0.1
    pad_max: int = 600
    # Bounds of the images a tool returns.
    out_factor: int = 28
    out_min_pixels: int = 3136
    out_max_pixels: int = 4014080
    max_select: int = 4
    # Whose tool server the tools imitate (checks and error texts): set from the profile, see for_profile.
    dialect: str = "v-retrver"

    def __post_init__(self) -> None:
        if self.coordinates not in COORDINATES:
            raise ValueError(
                f"ToolConfig.coordinates: expected one of {COORDINATES}, got {self.coordinates!r}"
            )
        if self.dialect not in DIALECTS:
            raise ValueError(f"ToolConfig.dialect: expected one of {DIALECTS}, got {self.dialect!r}")

    def for_profile(self, profile: Any) -> ToolConfig:
        """These settings with the tool dialect of a prompt profile (its ``tool_dialect`` setting)."""
        dialect = profile.settings.get("tool_dialect", "v-retrver")
        return self if dialect == self.dialect else replace(self, dialect=dialect)

    @classmethod
    def from_processor(cls, processor: Any, **overrides: Any) -> ToolConfig:
        """Read the resize settings off a Hugging Face processor, and the coordinate convention off the
        record of its model family (:func:`vretrver.families.family_of_processor`)."""
        ip = getattr(processor, "image_processor", processor)
        factor = int(getattr(ip, "patch_size", 14)) * int(getattr(ip, "merge_size", 2))
        size = getattr(ip, "size", None) or {}
        min_px = getattr(ip, "min_pixels", None) or size.get("shortest_edge") or 3136
        max_px = getattr(ip, "max_pixels", None) or size.get("longest_edge") or 12845056
        from vretrver.families import family_of_processor  # its records import this module

        coords = family_of_processor(processor).coordinates
        kw = dict(coordinates=coords, factor=factor, min_pixels=int(min_px), max_pixels=int(max_px))
        kw.update(overrides)
        return cls(**kw)


@dataclass
class ToolResult:
    tool: str | None
    valid: bool
    images: list[Image.Image] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str | None = None
    # crop_image: the cropped region in original-image pixels (x1, y1, x2, y2), padding included.
    box: tuple[int, int, int, int] | None = None


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's resize rule: sides that are multiples of ``factor``, area within [min, max] pixels."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def resize_for_model(img: Image.Image, cfg: ToolConfig) -> Image.Image:
    """A returned image at the size the model's processor gives it (out_* settings of the tool config)."""
    h, w = smart_resize(img.height, img.width, cfg.out_factor, cfg.out_min_pixels, cfg.out_max_pixels)
    return img if (w, h) == img.size else img.resize((w, h), Image.BICUBIC)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    if not (_is_int(x) or isinstance(x, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an int beyond the float range
        return False


class _Images:
    """Index -> image for one sample, loading each file once."""

    def __init__(self, images: Sequence[ImageLike | None]):
        self._src = list(images)
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self._src)

    def has(self, idx: int) -> bool:
        return 0 <= idx < len(self._src) and self._src[idx] is not None

    def get(self, idx: Any) -> tuple[Image.Image | None, str | None]:
        if not _is_int(idx):
            return None, f"image index must be an integer, got {str(idx)[:20]!r}"
        if not 0 <= idx < len(self._src):
            return None, f"image index {idx} is out of range (0 to {len(self._src) - 1})"
        if self._src[idx] is None:
            return None, "the query has no image" if idx == 0 else f"candidate {idx} has no image"
        if idx not in self._cache:
            try:
                self._cache[idx] = load_image(self._src[idx])
            except Exception:  # unreadable, truncated, or a decompression bomb: never the harness's end
                return None, f"image {idx} could not be read"
        return self._cache[idx], None


# The name tools are written against: ``len(table)``, ``table.has(index)``, ``table.get(index)`` ->
# ``(image, None)`` or ``(None, error text)``.
ImageTable = _Images


def tool_error(tool: str | None, msg: str) -> ToolResult:
    """An invalid call's result: tools report problems as results, never as exceptions."""
    return ToolResult(tool=tool, valid=False, error=msg)


def select_images(args: Any, images: Sequence[ImageLike | None] | _Images, cfg: ToolConfig) -> ToolResult:
    imgs = images if isinstance(images, _Images) else _Images(images)
    if not isinstance(args, dict) or "target_images" not in args:
        return tool_error("select_images", "select_images needs 'target_images': a list of image indices")
    targets = args["target_images"]
    if _is_int(targets):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        return tool_error("select_images", "'target_images' must be a non-empty list of image indices")
    order: list[int] = []
    seen: set[int] = set()  # a set, not `in order`: a call may list tens of thousands of indices
    for t in targets:
        if not _is_int(t):
            return tool_error("select_images", f"image index must be an integer, got {str(t)[:20]!r}")
        if t not in seen:
            seen.add(t)
            order.append(t)
    if len(order) > cfg.max_select:
        return tool_error(
            "select_images", f"at most {cfg.max_select} images can be selected, got {len(order)}"
        )
    out = []
    for t in order:
        img, err = imgs.get(t)
        if err:
            return tool_error("select_images", err)
        out.append(resize_for_model(img, cfg))
    return ToolResult(tool="select_images", valid=True, images=out, indices=order)


def _box_to_pixels(
    box: list[float], w: int, h: int, cfg: ToolConfig
) -> tuple[list[float] | None, str | None]:
    """Map a model box to original-image pixels, or say why it cannot be used."""
    if all(0.0 <= v <= 1.0 for v in box):
        sx, sy, lim_x, lim_y = w, h, 1.0, 1.0
    elif cfg.coordinates == "qwen3-vl":
        sx, sy, lim_x, lim_y = w / 1000, h / 1000, 1000, 1000
    else:
        rh, rw = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        sx, sy, lim_x, lim_y = w / rw, h / rh, rw, rh
    x1, y1, x2, y2 = box
    if min(box) < 0:
        return None, "bbox_2d has negative coordinates"
    if x2 <= x1 or y2 <= y1:
        return None, "bbox_2d must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2"
    if x1 >= lim_x or y1 >= lim_y or x2 > lim_x * (1 + EDGE_TOLERANCE) or y2 > lim_y * (1 + EDGE_TOLERANCE):
        return None, f"bbox_2d lies outside the image (width {lim_x:g}, height {lim_y:g})"
    return [x1 * sx, y1 * sy, min(x2 * sx, w), min(y2 * sy, h)], None


def crop_image(args: Any, images: Sequence[ImageLike | None] | _Images, cfg: ToolConfig) -> ToolResult:
    imgs = images if isinstance(images, _Images) else _Images(images)
    if not isinstance(args, dict):
        return tool_error("crop_image", "crop_image needs 'bbox_2d' and 'target_image'")
    box = args.get("bbox_2d")
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        return tool_error("crop_image", "'bbox_2d' must be a list of four numbers [x1, y1, x2, y2]")
    if "target_image" not in args:
        return tool_error("crop_image", "crop_image needs 'target_image': the index of the image to crop")
    idx = args["target_image"]
    img, err = imgs.get(idx)
    if err:
        return tool_error("crop_image", err)
    w, h = img.size
    px, err = _box_to_pixels([float(v) for v in box], w, h, cfg)
    if err:
        return tool_error("crop_image", err)
    pad_x = min(cfg.pad_fraction * w, cfg.pad_max)
    pad_y = min(cfg.pad_fraction * h, cfg.pad_max)
    x1 = max(0, math.floor(px[0] - pad_x))
    y1 = max(0, math.floor(px[1] - pad_y))
    x2 = min(w, math.ceil(px[2] + pad_x))
    y2 = min(h, math.ceil(px[3] + pad_y))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return tool_error("crop_image", "bbox_2d selects an empty region")
    if max(x2 - x1, y2 - y1) / min(x2 - x1, y2 - y1) > 200:
        return tool_error("crop_image", "bbox_2d is too thin (aspect ratio above 200)")
    crop = resize_for_model(img.crop((x1, y1, x2, y2)), cfg)
    return ToolResult(tool="crop_image", valid=True, images=[crop], indices=[idx], box=(x1, y1, x2, y2))


# ----------------------------------------------------------------------------- the built-in records

_INDEXING = "Index 0 is the query image; index k is the image of candidate k."

register_tool(
    Tool(
        name="select_images",
        run=select_images,
        schema=function_schema(
            "select_images",
            "Show up to four of the images again at high resolution so they can be compared in detail. "
            + _INDEXING,
            {
                "target_images": {
                    "type": "array",
                    "description": "The indices of 1 to 4 images, e.g. [0, 3, 7].",
                }
            },
        ),
        observation='The selected images {{ indices | join(", ") }} at high resolution.',
        caption=ToolCaption(image="{image}"),
    )
)
register_tool(
    Tool(
        name="crop_image",
        run=crop_image,
        schema=lambda hint: function_schema(
            "crop_image",
            "Zoom into a rectangular region of one image and return the enlarged crop. " + _INDEXING,
            {
                "bbox_2d": {"type": "array", "description": f"The region as [x1, y1, x2, y2]{hint}."},
                "target_image": {"type": "integer", "description": "The index of the image to crop."},
            },
        ),
        observation="The zoomed region of image {{ indices[0] }}.",
        caption=ToolCaption(
            heading="of {image}, box {box} (source pixels, padded)",
            image="the zoomed crop the model saw",
            box="the box on the source image",
        ),
    )
)


# ----------------------------------------------------------------------------- the release's crop geometry


def official_crop_region(box: list[Any], w: int, h: int) -> tuple[int, int, int, int] | str:
    """The pixel region the release's server crops for ``box`` on a ``w`` x ``h`` image, or why none.

    Its rule: the box is in pixels of the image file (normalised when all four values are at most 1);
    padding is 10 % of each side, at most 600 px; the padded box is clamped to the image in normalised
    coordinates and truncated to whole pixels. Unlike ours it never rejects a box outside the image: it
    clamps it, and only an empty result fails.
    """
    try:
        v = [float(x) for x in box]
    except (TypeError, ValueError, OverflowError):
        return "bbox_2d must hold four numbers"
    if not all(math.isfinite(x) for x in v):
        return "bbox_2d must hold four finite numbers"
    px, py = min(0.1, 600.0 / w), min(0.1, 600.0 / h)
    if all(x <= 1 for x in v):
        n = [v[0] - px, v[1] - py, v[2] + px, v[3] + py]
    else:
        n = [v[0] / w - px, v[1] / h - py, v[2] / w + px, v[3] / h + py]
    n = [min(max(0.0, x), 1.0) for x in n]
    region = (int(n[0] * w), int(n[1] * h), int(n[2] * w), int(n[3] * h))
    if region[2] <= region[0] or region[3] <= region[1]:
        return "bbox_2d selects an empty region"
    return region


# ----------------------------------------------------------------------------- dispatch


def resolve_call(
    call: ToolCall, cfg: ToolConfig, allowed: Sequence[str] = TOOL_NAMES
) -> tuple[str, Any] | ToolResult:
    """``(tool name, arguments)`` of a parsed call, or the invalid result a call that cannot run gets."""
    if cfg.dialect == "official":
        from vretrver.tools_official import official_call  # imports this module: loaded on first use

        return official_call(call, allowed)
    if call.error:
        return tool_error(call.name, call.error)
    if call.name not in allowed or call.name not in _REGISTRY:
        return tool_error(
            call.name, f"unknown tool {str(call.name)[:40]!r}: available tools are {', '.join(allowed)}"
        )
    return call.name, call.arguments


def run_tool(
    call: ToolCall,
    images: Sequence[ImageLike | None] | _Images,
    cfg: ToolConfig,
    allowed: Sequence[str] = TOOL_NAMES,
) -> ToolResult:
    """Execute a parsed tool call; every problem becomes an invalid result with an error text."""
    resolved = resolve_call(call, cfg, allowed)
    if isinstance(resolved, ToolResult):
        return resolved
    name, args = resolved
    imgs = images if isinstance(images, _Images) else _Images(images)
    try:
        if cfg.dialect == "official":
            from vretrver.tools_official import run_official

            return run_official(name, args, imgs, cfg)
        return _REGISTRY[name].run(args, imgs, cfg)
    except Exception as e:  # a tool must never take the harness down; report it as an invalid call
        return tool_error(name, f"the tool failed: {type(e).__name__}")


def image_table(images: Sequence[ImageLike | None]) -> _Images:
    """A loader over one sample's images (index 0 query, k candidate k), shared by several calls."""
    return _Images(images)
