"""LLaMA-Factory (0.9.5) integration: export trajectories as a sharegpt dataset, validate it, and render it
through LLaMA-Factory's own data pipeline for checks.

* :mod:`.rows`: a trajectory record as a sharegpt row, the ``dataset_info.json`` entry, the template of a
  checkpoint (from its family record, :mod:`vretrver.families`);
* :mod:`.tokens`: a row's sequence length as LLaMA-Factory will build it (without loading it);
* :mod:`.export`: the export itself (validation, tool images, report);
* :mod:`.pipeline`: LLaMA-Factory's own data pipeline on an exported dataset (the only module that
  imports ``llamafactory``).

The exported text is exactly what our protocol sends at inference and in RL rollouts:

* the first turn is ``system``: our rendered system prompt, tool schemas included (no ``tools`` column,
  so LLaMA-Factory adds nothing of its own);
* the first user turn is ``human``: the profile's user prompt, one ``<image>`` per image part;
* assistant turns are ``gpt`` turns holding the raw assistant text (``<think>`` ... ``<tool_call>`` ...);
* tool results are ``observation`` turns holding what sits between ``<tool_response>\\n`` and
  ``\\n</tool_response>`` in our user message: the Qwen templates (``qwen2_vl``, ``qwen3_vl_nothink``)
  wrap observations as ``<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>``, which is
  character for character our user message. A profile whose observations are not wrapped that way is
  exported as ``human`` turns instead (same text either way).

Images are listed in ``<image>`` order: the query and candidate images of the sample (their own paths),
then the images the tools returned (copied into ``<dataset>_images/`` next to the dataset file).
Literal ``<image>`` / ``<video>`` / ``<audio>`` strings in text would be read as placeholders: they are
escaped (and counted), which training samples built by :mod:`vretrver.sft` never need.

The template of each family is its record's ``llamafactory_template`` (for Qwen3-VL ``qwen3_vl_nothink``:
``qwen3_vl`` is a reasoning template that edits ``<think>`` blocks of assistant turns).
"""

from __future__ import annotations

from vretrver.integrations.llamafactory.export import (
    ExportConfig,
    ImageCache,
    RecordSource,
    export_llamafactory,
    validate_row,
)
from vretrver.integrations.llamafactory.pipeline import render_with_llamafactory
from vretrver.integrations.llamafactory.rows import (
    DATASET_TAGS,
    IMAGE,
    OBS_CLOSE,
    OBS_OPEN,
    TEMPLATES,
    ExportError,
    conversation_to_sharegpt,
    dataset_info_entry,
    record_to_conversation,
    template_for_model,
    update_dataset_info,
)
from vretrver.integrations.llamafactory.tokens import TokenCounter, lf_image_tokens, render_chatml

__all__ = [
    "DATASET_TAGS",
    "IMAGE",
    "OBS_CLOSE",
    "OBS_OPEN",
    "TEMPLATES",
    "ExportConfig",
    "ExportError",
    "ImageCache",
    "RecordSource",
    "TokenCounter",
    "conversation_to_sharegpt",
    "dataset_info_entry",
    "export_llamafactory",
    "lf_image_tokens",
    "record_to_conversation",
    "render_chatml",
    "render_with_llamafactory",
    "template_for_model",
    "update_dataset_info",
    "validate_row",
]
