"""Model families: one record per family holding everything that differs between, say, Qwen2.5-VL and
Qwen3-VL, so that supporting another family is one :class:`Family` record (plus its own files) and no
edit anywhere else.

A record says how the family is recognised (the ``model_type`` of a checkpoint's ``config.json``, the
class name of its processor) and what it needs:

* ``coordinates``: how its crop boxes are written, one of :data:`vretrver.tools.COORDINATES` (read by
  :meth:`vretrver.tools.ToolConfig.from_processor`, hence by every engine, the SFT export and the RL
  rollout; by ``vretrver rl data build --model``);
* ``llamafactory_template`` and ``chat_format``: the LLaMA-Factory template that renders our text
  exactly, and how that template wraps each role (to count tokens without loading LLaMA-Factory);
* ``turn_end_token``: the token the chat template closes an assistant turn with (the verl agent loop
  appends it when generation stopped at ``</tool_call>``);
* ``model_classes`` and ``vision_modules``: the transformers model classes and the modules the RL recipe
  freezes (:mod:`vretrver.integrations.verl.frozen_vision`);
* ``chat_template`` and ``tiny``: the chat template file and the settings of the tiny random checkpoint
  (:mod:`vretrver.testing.tiny_models`);
* ``recipe``: the stem of the family's recipe files (``LLaMA-Factory/configs/<recipe>_full_sft.yaml``,
  ``EasyR1/configs/<recipe>_rl.yaml``).

The crop conventions themselves are geometry, not family settings: they live in :mod:`vretrver.tools`
and a family picks one. A family defined outside this package is added with :func:`register_family` by
any module imported before it is used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vretrver.testing.tiny_models import QWEN2_5_VL_TINY, QWEN3_VL_TINY, TinyModelSpec

CHAT_TEMPLATE_DIR = Path(__file__).resolve().parent / "protocol" / "chat_templates"
# The family of a processor no record claims: what every engine assumed before families had records.
DEFAULT_FAMILY = "qwen2_5_vl"


class FamilyError(ValueError):
    """An unknown model family, or a record that contradicts a registered one."""


@dataclass(frozen=True)
class ChatFormat:
    """How a chat template wraps each sharegpt role (head, tail) and shows one image before the processor
    expands it; token counting renders a row with it instead of loading LLaMA-Factory."""

    system: tuple[str, str]
    human: tuple[str, str]
    observation: tuple[str, str]
    gpt: tuple[str, str]
    image: str

    def wrap(self, role: str) -> tuple[str, str]:
        if role not in ("system", "human", "observation", "gpt"):
            raise KeyError(role)
        return getattr(self, role)


# The Qwen templates of LLaMA-Factory (qwen2_vl, qwen3_vl_nothink): ChatML; observations are user turns
# wrapped in <tool_response>, character for character our observation message.
CHATML = ChatFormat(
    system=("<|im_start|>system\n", "<|im_end|>\n"),
    human=("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    observation=(
        "<|im_start|>user\n<tool_response>\n",
        "\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    ),
    gpt=("", "<|im_end|>\n"),
    image="<|vision_start|><|image_pad|><|vision_end|>",
)


@dataclass(frozen=True)
class Family:
    """Everything that differs between model families (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    coordinates: str
    llamafactory_template: str
    # class names that identify a processor whose checkpoint is unknown (see family_of_processor)
    processor_classes: tuple[str, ...] = ()
    # transformers model classes (names in ``transformers``, or the classes themselves)
    model_classes: tuple[str | type, ...] = ()
    # dotted paths of the modules the RL recipe freezes, from the loaded model
    vision_modules: tuple[str, ...] = ("model.visual",)
    turn_end_token: str = "<|im_end|>"
    chat_format: ChatFormat = CHATML
    chat_template: str | Path | None = None  # a file name in CHAT_TEMPLATE_DIR, or a path
    tiny: TinyModelSpec | None = field(default=None, hash=False)
    recipe: str | None = None

    def __post_init__(self) -> None:
        from vretrver.tools import COORDINATES

        if not self.name or not self.model_types:
            raise FamilyError(f"family {self.name!r}: a name and at least one model_type are required")
        if self.coordinates not in COORDINATES:
            raise FamilyError(
                f"family {self.name!r}: coordinates must be one of {COORDINATES}, got {self.coordinates!r}"
            )

    def chat_template_path(self) -> Path:
        if self.chat_template is None:
            raise FamilyError(f"family {self.name!r} has no chat template file")
        return CHAT_TEMPLATE_DIR / self.chat_template  # an absolute path stays as it is

    def transformers_classes(self) -> list[type]:
        """The model classes, imported from transformers where given by name."""
        import transformers

        return [getattr(transformers, c) if isinstance(c, str) else c for c in self.model_classes]


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    """Add a family. Its name, model types and processor classes must be its own (``replace``: a record
    of the same name is replaced). Returns the record."""
    if family.name in _REGISTRY and not replace:
        raise FamilyError(f"family {family.name!r} is already registered")
    for other in _REGISTRY.values():
        if other.name == family.name:
            continue
        for kind, mine, theirs in (
            ("model_type", family.model_types, other.model_types),
            ("processor class", family.processor_classes, other.processor_classes),
        ):
            shared = sorted(set(mine) & set(theirs))
            if shared:
                raise FamilyError(f"family {family.name!r}: {kind} {shared[0]!r} belongs to {other.name!r}")
    _REGISTRY[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests that add one of their own)."""
    _REGISTRY.pop(name, None)


def families() -> tuple[Family, ...]:
    """The registered families, in registration order."""
    return tuple(_REGISTRY.values())


def get_family(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r} (known: {', '.join(_REGISTRY)})") from None


def model_types() -> list[str]:
    return sorted(t for f in _REGISTRY.values() for t in f.model_types)


def family_of_model_type(model_type: str | None, where: str | os.PathLike | None = None) -> Family:
    """The family of a ``model_type``; the error names ``where`` (e.g. the config file) and the known types."""
    for f in _REGISTRY.values():
        if model_type in f.model_types:
            return f
    prefix = f"{where}: " if where else ""
    raise FamilyError(
        f"{prefix}model_type {model_type!r} is not a known model family (known: {', '.join(model_types())})"
    )


def checkpoint_model_type(model_path: str | os.PathLike) -> str | None:
    """The ``model_type`` of a checkpoint folder's config.json (ValueError naming the file if unreadable)."""
    cfg = Path(model_path) / "config.json"
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg}: cannot read the model type ({e})") from None


def family_of_checkpoint(model_path: str | os.PathLike) -> Family:
    """The family of a checkpoint folder, from its config.json ``model_type``."""
    return family_of_model_type(checkpoint_model_type(model_path), Path(model_path) / "config.json")


def _processor_model_type(processor: Any) -> str | None:
    """The ``model_type`` of the checkpoint a processor was loaded from, where that can be told without
    loading anything: the config verl binds to its processors, else the checkpoint's config.json (a local
    folder, or a hub id already in the local cache)."""
    config = getattr(processor, "config", None)
    if isinstance(getattr(config, "model_type", None), str):
        return config.model_type
    name = getattr(getattr(processor, "tokenizer", None), "name_or_path", None)
    if not isinstance(name, str) or not name:
        return None
    cfg: str | Path | None = Path(name) / "config.json"
    if not Path(cfg).is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cfg = try_to_load_from_cache(name, "config.json")
        except Exception:  # not a hub id either
            cfg = None
        if not isinstance(cfg, str):
            return None
    try:
        model_type = json.loads(Path(cfg).read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    return model_type if isinstance(model_type, str) else None


def family_of_processor(processor: Any) -> Family:
    """The family of a loaded processor: by the ``model_type`` of its checkpoint when that is known (two
    families may share a processor class), else by its class (or a base class), else
    :data:`DEFAULT_FAMILY` (e.g. an image processor alone or a stand-in object)."""
    model_type = _processor_model_type(processor)
    for f in _REGISTRY.values():
        if model_type in f.model_types:
            return f
    for cls in type(processor).__mro__:
        for f in _REGISTRY.values():
            if cls.__name__ in f.processor_classes:
                return f
    return _REGISTRY[DEFAULT_FAMILY]


class ModelTypeMap(Mapping[str, Any]):
    """A read-only ``model_type -> record attribute`` view that follows the registry (e.g. the
    LLaMA-Factory template per model type)."""

    def __init__(self, attribute: str):
        self.attribute = attribute

    def _items(self) -> dict[str, Any]:
        return {t: getattr(f, self.attribute) for f in _REGISTRY.values() for t in f.model_types}

    def __getitem__(self, model_type: str) -> Any:
        return self._items()[model_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return f"ModelTypeMap({self._items()!r})"


# ----------------------------------------------------------------------------- the built-in families

register_family(
    Family(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        coordinates="qwen2.5-vl",
        llamafactory_template="qwen2_vl",
        processor_classes=("Qwen2VLProcessor",),
        model_classes=("Qwen2VLForConditionalGeneration",),
    )
)
register_family(
    Family(
        name="qwen2_5_vl",
        model_types=("qwen2_5_vl",),
        coordinates="qwen2.5-vl",  # absolute pixels of the image as the processor resized it
        llamafactory_template="qwen2_vl",
        processor_classes=("Qwen2_5_VLProcessor",),
        model_classes=("Qwen2_5_VLForConditionalGeneration",),
        chat_template="qwen2_5_vl.jinja",
        tiny=QWEN2_5_VL_TINY,
        recipe="qwen2_5_vl_7b",
    )
)
register_family(
    Family(
        name="qwen3_vl",
        model_types=("qwen3_vl", "qwen3_vl_moe"),
        coordinates="qwen3-vl",  # relative, 0 to 1000
        # qwen3_vl is LLaMA-Factory's reasoning template: it edits the <think> blocks of assistant turns
        llamafactory_template="qwen3_vl_nothink",
        processor_classes=("Qwen3VLProcessor",),
        model_classes=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
        chat_template="qwen3_vl.jinja",
        tiny=QWEN3_VL_TINY,
        recipe="qwen3_vl_8b",
    )
)
