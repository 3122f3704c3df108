"""Any registered tool as a verl tool (``verl.tools.base_tool.BaseTool``): one class for every tool.

:class:`VRetrverTool` runs the tool record that its ``config.name`` names (:mod:`vretrver.tool_registry`),
through :func:`vretrver.tools.run_tool`, the code evaluation runs. Our agent loop builds the tools of each
sample's profile itself (:func:`tool_for`); a tool yaml (``EasyR1/configs/tools.yaml``, written by
:func:`tool_yaml_entries`) is what verl's own ``ToolAgentLoop`` loads, and lets a run override a tool's
settings::

    tools:
      - class_name: vretrver.integrations.verl.tools.VRetrverTool
        config: {type: native, name: select_images, profile: v-retrver}

``config`` may also hold ``coordinates`` and any :class:`vretrver.tools.ToolConfig` field as an override;
the schema comes from the profile (``tool_schema`` left out).

Each sample's images reach a tool through its per-sample arguments: ``create_kwargs.image_map`` (written
by :mod:`.dataset`) maps tool image index (0 = query, k = candidate k) to a position among the prompt's
images. Our agent loop passes the sample's image table and the processor's :class:`ToolConfig` directly;
verl's own ``ToolAgentLoop`` passes ``agent_data``, whose first messages hold the prompt images.

``execute`` returns the images, a short text rendered from the profile's observation template, and in
its metrics ``valid`` / ``indices`` / ``error``, from which the agent loop renders the observation.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from vretrver.protocol import DEFAULT_PROFILE, ToolCall, load_profile, observation_message
from vretrver.tools import ToolConfig, ToolResult, get_tool, image_table, run_tool

OBS_OPEN = "<tool_response>"
OBS_CLOSE = "</tool_response>"


def _tool_config_overrides(config: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(ToolConfig)}
    return {k: v for k, v in (config or {}).items() if k in known and v is not None}


def prompt_images(messages: list[dict[str, Any]] | None) -> list[Any]:
    """The images of the image parts of ``messages``, in order (PIL images or paths)."""
    out: list[Any] = []
    for m in messages or []:
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image":
                out.append(part.get("image"))
    return out


def sample_images(image_map: list[int] | None, images: list[Any]) -> list[Any]:
    """Tool index -> image (None where the sample has none), from the image map and the prompt images."""
    if image_map is None:
        return list(images)
    return [images[p] if isinstance(p, int) and 0 <= p < len(images) else None for p in image_map]


def observation_text(profile, result: ToolResult) -> str:
    """The text of the observation (without images or the ``<tool_response>`` wrapper)."""
    parts, _ = observation_message(profile, result.tool, result.indices, [], result.error)
    text = "".join(p.get("text", "") for p in parts).strip()
    if text.startswith(OBS_OPEN):
        text = text[len(OBS_OPEN) :]
    if text.endswith(OBS_CLOSE):
        text = text[: -len(OBS_CLOSE)]
    return text.strip()


class VRetrverTool(BaseTool):
    """The registered tool ``config["name"]`` (default: the name of ``tool_schema``) as a verl tool:
    per-instance image map, dispatch to :func:`vretrver.tools.run_tool`."""

    def __init__(self, config: dict[str, Any] | None, tool_schema: OpenAIFunctionToolSchema | None):
        config = dict(config or {})
        name = config.get("name") or (tool_schema.function.name if tool_schema is not None else None)
        if not name:
            raise ValueError(f"{type(self).__name__}: config needs 'name', the registered tool it runs")
        self.tool_name = get_tool(name).name  # an unknown name fails here, listing the registered ones
        self.profile = load_profile(config.get("profile") or DEFAULT_PROFILE)
        self.overrides = _tool_config_overrides(config)
        self._coordinates = config.get("coordinates") or "qwen2.5-vl"
        self._instances: dict[str, dict[str, Any]] = {}
        super().__init__(config, tool_schema)
        if self.name != self.tool_name:
            raise ValueError(
                f"{type(self).__name__}: the tool schema names {self.name!r}, expected {self.tool_name!r}"
            )

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        for schema in self.profile.tool_schemas(self._coordinates):
            if schema["function"]["name"] == self.tool_name:
                return OpenAIFunctionToolSchema.model_validate(schema)
        raise ValueError(f"profile {self.profile.name!r} declares no tool {self.tool_name!r}")

    def tool_config(self, base: ToolConfig | None = None) -> ToolConfig:
        cfg = base or ToolConfig(coordinates=self._coordinates)
        return dataclasses.replace(cfg, **self.overrides) if self.overrides else cfg

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        instance_id = instance_id or uuid4().hex
        create_kwargs = kwargs.get("create_kwargs") or {}
        image_map = create_kwargs.get("image_map")
        self._instances[instance_id] = {"image_map": list(image_map) if image_map is not None else None}
        return instance_id, ToolResponse()

    def run(self, parameters: Any, images: Any, cfg: ToolConfig) -> ToolResult:
        call = ToolCall(
            name=self.tool_name, arguments=parameters if isinstance(parameters, dict) else None, raw=""
        )
        if not isinstance(parameters, dict):
            call.error = "the tool call arguments must be a JSON object"
        return run_tool(call, images, cfg, allowed=(self.tool_name,))

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict]:
        """Run the tool on the sample's images.

        kwargs: ``images`` (the sample's image table: tool index -> image) and ``tool_config`` from our
        agent loop; or ``agent_data`` from verl's ``ToolAgentLoop`` (prompt images in its messages).
        """
        state = self._instances.get(instance_id) or {"image_map": None}
        images = kwargs.get("images")
        if images is None:
            agent_data = kwargs.get("agent_data")
            found = prompt_images(getattr(agent_data, "messages", None)) or list(
                getattr(agent_data, "image_data", None) or []
            )
            images = image_table(sample_images(state["image_map"], found))
        cfg = self.tool_config(kwargs.get("tool_config"))
        result = self.run(parameters, images, cfg)
        response_kwargs: dict[str, Any] = {"text": observation_text(self.profile, result)}
        if result.images:  # ToolResponse rejects image=None
            response_kwargs["image"] = list(result.images)
        response = ToolResponse(**response_kwargs)
        metrics = {
            "valid": result.valid,
            "tool": self.tool_name,
            "indices": list(result.indices),
            "error": result.error,
        }
        return response, 0.0, metrics

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._instances.pop(instance_id, None)


CLASS_NAME = f"{VRetrverTool.__module__}.{VRetrverTool.__qualname__}"
_BUILT: dict[tuple[str, str], VRetrverTool] = {}


def tool_for(profile: str, name: str) -> VRetrverTool:
    """The verl tool for registered tool ``name`` shown as profile ``profile`` shows it (built once)."""
    key = (profile, name)
    if key not in _BUILT:
        _BUILT[key] = VRetrverTool({"type": "native", "name": name, "profile": profile}, None)
    return _BUILT[key]


def tool_yaml_entries(profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """The content of a verl tool yaml that loads every tool of ``profile`` (``tools.yaml`` is this for
    the default profile)."""
    tools = load_profile(profile).tools
    entries = [
        {"class_name": CLASS_NAME, "config": {"type": "native", "name": n, "profile": profile}} for n in tools
    ]
    return {"tools": entries}
