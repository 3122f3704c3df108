"""The tool registry: one :class:`Tool` record per tool, registered once and found by name everywhere.

A record holds everything the project needs of a tool: how it runs, the function schema our profiles
show, the sentence our observations add after its images, and how the trajectory viewer captions it.
Profiles list tool names; evaluation, the SFT export and the verl rollout take the rest from the record,
so a new tool is one record passed to :func:`register_tool` by a module imported before the tool is used
(any module a profile names in its ``tool_modules`` setting is imported when the profile loads). The
built-in ``select_images`` and ``crop_image`` are registered by :mod:`vretrver.tools`, which re-exports
this module's names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vretrver.tools import ImageTable, ToolConfig, ToolResult


@dataclass(frozen=True)
class ToolCaption:
    """How the trajectory viewer describes a valid call of a tool (read through :func:`describe_call`).

    Format fields: ``{images}`` the names of the call's image indices, ``{image}`` the name of one of them
    (in ``heading`` the first; in ``image`` the returned image's own index), ``{box}`` the call's box,
    ``{n}`` the returned image's number (from 1).
    """

    heading: str = "returned {images}"  # after "tool <name>", when the call names images
    image: str = "image {n}"  # under each returned image
    box: str | None = None  # set: the source image is also shown with the call's box, captioned so


@dataclass(frozen=True)
class CallCaption:
    """The viewer's text for one call: its heading, one caption per returned image, the box figure's."""

    heading: str
    images: list[str]
    box: str | None


@dataclass(frozen=True)
class Tool:
    """One tool, registered once (:func:`register_tool`) and found by name everywhere.

    * ``run(arguments, images, cfg)``: checks the arguments and runs the call on the sample's images (an
      :class:`ImageTable`); a problem is an invalid :class:`ToolResult` with an error text, not an exception;
    * ``schema``: the function schema our profiles show (their ``tools.json`` renders ``tool_schemas``), or a
      function of the coordinate hint (how the model is told to write coordinates) returning it;
    * ``observation``: a jinja template of the sentence after the returned images in our observations
      (``tool_text()`` in ``observation.jinja``), with that template's variables (``indices``, ``images``);
    * ``caption``: how the trajectory viewer describes a call.
    """

    name: str
    run: Callable[[Any, ImageTable, ToolConfig], ToolResult]
    schema: dict[str, Any] | Callable[[str], dict[str, Any]]
    observation: str = ""
    caption: ToolCaption = field(default_factory=ToolCaption)

    def function_schema(self, coordinate_hint: str = "") -> dict[str, Any]:
        """The schema shown to the model (a fresh copy), for the given coordinate hint."""
        schema = self.schema(coordinate_hint) if callable(self.schema) else copy.deepcopy(self.schema)
        if not isinstance(schema, dict) or (schema.get("function") or {}).get("name") != self.name:
            raise ToolError(f"tool {self.name!r}: its schema must be a function schema named {self.name!r}")
        return schema


class ToolError(ValueError):
    """An unknown tool name, or a record that clashes with a registered one."""


def function_schema(
    name: str, description: str, properties: dict[str, Any], required: Sequence[str] | None = None
) -> dict[str, Any]:
    """An OpenAI-style function schema (every property required unless ``required`` says otherwise)."""
    params = {"type": "object", "properties": properties, "required": list(required or properties)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": params}}


_REGISTRY: dict[str, Tool] = {}


def register_tool(tool: Tool, replace: bool = False) -> Tool:
    """Make ``tool`` available to every profile that lists its name (a name is taken once, unless
    ``replace``). Returns the record."""
    if not replace and _REGISTRY.get(tool.name, tool) is not tool:
        raise ToolError(f"a tool named {tool.name!r} is already registered")
    _REGISTRY[tool.name] = tool
    return tool


def unregister_tool(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_tool(name: str) -> Tool:
    if name not in _REGISTRY:
        raise ToolError(f"no tool named {name!r} is registered (registered: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def registered_tools() -> list[str]:
    return list(_REGISTRY)


def describe_call(
    name: str | None, indices: Sequence[int], box: Any, n_images: int, name_of: Callable[[int], str]
) -> CallCaption:
    """The viewer's text for a valid call of tool ``name`` (its record's :class:`ToolCaption`; an unknown
    name gets the default one). ``name_of`` names an image index (query image, candidate k)."""
    cap = _REGISTRY[name].caption if name in _REGISTRY else ToolCaption()
    names = [name_of(i) for i in indices]
    fields = {"images": ", ".join(names), "image": names[0] if names else "", "box": box}
    images = []
    for j in range(n_images):
        own = names[j] if j < len(names) else None
        # A caption naming the image's own index falls back to the default past the call's indices.
        template = ToolCaption.image if "{image}" in cap.image and own is None else cap.image
        images.append(template.format(**{**fields, "image": own, "n": j + 1}))
    heading = cap.heading.format(**fields) if names else ""
    return CallCaption(heading, images, cap.box if box and names else None)
