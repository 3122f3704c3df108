"""Freeze the vision encoder (and its merger / projector) of every registered model family during verl
training.

verl 0.9.1 accepts ``actor_rollout_ref.actor.freeze_vision_tower`` but its FSDP engine never reads it: the
vision tower would be trained. The RL recipe therefore names this module as the model's ``external_lib``,
which verl imports in every worker before it builds a model. Importing it registers, for each model class
of each family record (:mod:`vretrver.families`), a subclass whose ``from_pretrained`` sets
``requires_grad=False`` on the record's ``vision_modules``; the optimizer then never updates them. The
subclass keeps the upstream class name, so the ``architectures`` written into saved checkpoints stay the
ones vLLM and transformers know.

A family registered outside this package must be registered before this module is imported (or passed
to :func:`register_frozen_vision`).
"""

from __future__ import annotations

from transformers import AutoModelForImageTextToText

from vretrver.families import Family, families, get_family


def _module_at(model: object, path: str) -> object | None:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def vision_modules(model: object, family: Family) -> list[object]:
    """The modules of ``model`` that ``family`` freezes. A path under ``model.`` is also looked up on the
    outer model (older transformers releases kept ``visual`` there)."""
    found = []
    for path in family.vision_modules:
        module = _module_at(model, path)
        if module is None and path.startswith("model."):
            module = _module_at(model, path[len("model.") :])
        if module is None:
            raise AttributeError(f"family {family.name!r}: {type(model).__name__} has no module {path!r}")
        found.append(module)
    return found


def vision_encoder(model: object) -> object:
    """The vision encoder of a Qwen VL model (``model.model.visual``; ``model.visual`` in older releases)."""
    return vision_modules(model, get_family("qwen2_5_vl"))[0]


def _with_frozen_vision(base: type, family: Family) -> type:
    class FrozenVision(base):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            # after loading: loading replaces the parameters (and their requires_grad) built in __init__
            model = super().from_pretrained(*args, **kwargs)
            for module in vision_modules(model, family):
                module.requires_grad_(False)
            return model

    FrozenVision.__name__ = FrozenVision.__qualname__ = base.__name__
    FrozenVision.__doc__ = f"{base.__name__} with its vision encoder frozen (vretrver RL recipe)."
    return FrozenVision


FROZEN_VISION_MODELS: dict[type, type] = {}  # config class -> registered subclass


def register_frozen_vision(family: Family) -> None:
    """Make ``AutoModelForImageTextToText`` load ``family``'s model classes with frozen vision modules."""
    for model_class in family.transformers_classes():
        frozen = _with_frozen_vision(model_class, family)
        FROZEN_VISION_MODELS[model_class.config_class] = frozen
        AutoModelForImageTextToText.register(model_class.config_class, frozen, exist_ok=True)


for _family in families():
    register_frozen_vision(_family)
