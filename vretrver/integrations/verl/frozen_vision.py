"""Freeze the vision encoder (and its merger / projector) of Qwen2.5-VL and Qwen3-VL during verl training.

verl 0.9.1 accepts ``actor_rollout_ref.actor.freeze_vision_tower`` but its FSDP engine never reads it: the
vision tower would be trained. The RL recipe therefore names this module as the model's ``external_lib``,
which verl imports in every worker before it builds a model. Importing it registers, for the two families,
a subclass of the transformers model whose ``from_pretrained`` sets ``requires_grad=False`` on the vision
encoder; the optimizer then never updates it. The subclass keeps the upstream class name, so the
``architectures`` written into saved checkpoints stay the ones vLLM and transformers know.
"""

from __future__ import annotations

from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)


def vision_encoder(model) -> object:
    """The vision encoder of a Qwen VL model (``model.model.visual``; ``model.visual`` in older releases)."""
    inner = getattr(model, "model", None)
    return getattr(inner, "visual", None) or model.visual


def _with_frozen_vision(base: type) -> type:
    class FrozenVision(base):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            # after loading: loading replaces the parameters (and their requires_grad) built in __init__
            model = super().from_pretrained(*args, **kwargs)
            vision_encoder(model).requires_grad_(False)
            return model

    FrozenVision.__name__ = FrozenVision.__qualname__ = base.__name__
    FrozenVision.__doc__ = f"{base.__name__} with its vision encoder frozen (vretrver RL recipe)."
    return FrozenVision


FROZEN_VISION_MODELS = {
    config: _with_frozen_vision(model)
    for config, model in [
        (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
        (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
    ]
}
for _config, _model in FROZEN_VISION_MODELS.items():
    AutoModelForImageTextToText.register(_config, _model, exist_ok=True)
