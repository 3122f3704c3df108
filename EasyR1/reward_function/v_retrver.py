"""The V-Retrver reward for verl: ``reward.custom_reward_function.path=EasyR1/reward_function/v_retrver.py``.

Edit VARIANT / OVERRIDES here, or pass them per run as hydra overrides. The recipes set the variant, so
it is replaced without a ``+``: ``reward.custom_reward_function.reward_kwargs.variant=public``; a constant
they do not set is added with one: ``+reward.custom_reward_function.reward_kwargs.k_r=3``. (``++``
adds or replaces either.)
Variants (vretrver.reward.VARIANTS): ``eapo`` (the paper's EAPO reward, default), ``public`` (the public
training code's reward), ``text-only`` (the RL-without-tools ablation).

The score uses the protocol's parser on each assistant turn and the tool counts the rollout recorded
(``extra_info["vretrver_rollout"]``, written by the ``vretrver_agent`` agent loop); the ``public`` variant
reads the decoded response verl passes (``solution_str``), as the public training code does. The returned
dict holds the score and its terms (format, rank, tool, position, ...), which verl logs.
"""

from __future__ import annotations

from typing import Any

from vretrver.integrations.verl.reward import compute_score as _compute_score

VARIANT = "eapo"
OVERRIDES: dict[str, Any] = {}  # e.g. {"k_r": 5, "sigma": 1.0, "eta": 0.2, "rho": 0.1, "tau": 1}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    settings = {"variant": VARIANT, **OVERRIDES, **kwargs}
    return _compute_score(data_source, solution_str, ground_truth, extra_info, **settings)
