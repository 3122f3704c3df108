"""``compute_score`` with verl's reward-function signature, on top of :mod:`vretrver.reward`.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`` once per
trajectory. The assistant turns and the valid-tool-call count come from the record our agent loop leaves
in ``extra_info["vretrver_rollout"]``. ``solution_str`` (the response verl decoded with
``skip_special_tokens=True``, tool results included) stands for a single-turn trajectory that has no
record, and it is what the ``public`` variant reads, as the public training code reads its decoded
response. The variant and any constant come from ``reward.custom_reward_function.reward_kwargs``
(``variant: eapo | public | text-only``, ``k_r: 5``, ...).

The ``public`` variant's group curiosity bonus needs the whole GRPO group, which verl's per-trajectory
reward path never sees: :func:`vretrver.reward.apply_group_curiosity` computes it where the group is at
hand; here that term is 0 (logged as ``curiosity``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vretrver.integrations.verl import ROLLOUT_RECORD_KEY, SAMPLE_INFO_KEY
from vretrver.reward import DEFAULT_VARIANT, RewardSettings, reward_settings, score_trajectory

# Keys verl itself may add to the call (reward model plumbing); they are not reward settings.
_VERL_KWARGS = {"reward_router_address", "reward_model_tokenizer"}
_SETTINGS = {f.name for f in dataclasses.fields(RewardSettings)}


def settings_from_kwargs(kwargs: dict[str, Any]) -> RewardSettings:
    kw = {k: v for k, v in kwargs.items() if k not in _VERL_KWARGS}
    variant = kw.pop("variant", DEFAULT_VARIANT)
    unknown = sorted(set(kw) - _SETTINGS)
    if unknown:
        raise ValueError(
            f"compute_score: unknown reward settings {unknown}; expected 'variant' or {sorted(_SETTINGS)}"
        )
    return reward_settings(variant, **kw)


def _ground_truth(ground_truth: Any) -> list[int]:
    if isinstance(ground_truth, dict):  # reward_model given whole
        ground_truth = ground_truth.get("ground_truth")
    if hasattr(ground_truth, "tolist"):  # numpy arrays from the batch
        ground_truth = ground_truth.tolist()
    if isinstance(ground_truth, (int, str)):
        ground_truth = [ground_truth]
    try:
        gt = [int(g) for g in ground_truth]
    except (TypeError, ValueError):
        raise ValueError(
            f"compute_score: ground_truth must be candidate numbers, got {ground_truth!r}"
        ) from None
    if not gt:
        raise ValueError("compute_score: empty ground_truth")
    return gt


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float | int]:
    """The reward and its terms (all numbers, logged by verl as ``reward_extra_info``)."""
    settings = settings_from_kwargs(kwargs)
    extra_info = extra_info or {}
    record = extra_info.get(ROLLOUT_RECORD_KEY)
    info = extra_info.get(SAMPLE_INFO_KEY) or {}
    num_candidates = info.get("num_candidates") if isinstance(info, dict) else None
    if isinstance(record, dict):
        turns = list(record.get("turns") or [])
        n_valid = int(record.get("n_valid_calls", 0))
        n_invalid = int(record.get("n_invalid_calls", 0))
        num_candidates = num_candidates or record.get("num_candidates")
    else:
        if "<tool_response>" in (solution_str or ""):
            raise ValueError(
                "compute_score: a multi-turn trajectory without the vretrver_agent record; tool counts cannot "
                "be taken from the text. Roll out with the vretrver_agent agent loop."
            )
        turns, n_valid, n_invalid = [solution_str or ""], 0, 0
    breakdown = score_trajectory(
        turns,
        _ground_truth(ground_truth),
        n_valid,
        n_invalid,
        num_candidates=int(num_candidates) if num_candidates else None,
        settings=settings,
        response=solution_str or "",
    )
    return breakdown.as_dict()
