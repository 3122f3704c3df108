"""The RL reward: EAPO (the paper's evidence-aligned reward) and its named variants.

    R = alpha * r_format + beta * r_rank + r_tool                      (method.md section 4)

* ``r_format = 0.5 * [every assistant turn is well-tagged] + 0.5 * [the final answer is a list of
  integers]``; a trajectory without a final answer gets 0.
* ``r_rank = exp(-(k - 1)^2 / (2 sigma^2))`` with k the 1-based position of the ground truth in the
  answer; 0 beyond ``k_r``, when the ground truth is not listed, or without an answer.
* ``r_tool = eta * [k = 1] * [N_valid > 0] - rho * max(0, N_valid - tau)``.

Variants, selectable by name (:data:`VARIANTS`):

* ``eapo`` (default): the paper's constants, maximum 1.2 (ranked first with exactly one valid tool call);
* ``public``: the reward the public training code uses: weights 0.3 / 0.7, no cut-off, a penalty of 0.05
  per valid call beyond the first, a group "curiosity" bonus (:func:`group_curiosity_bonus`), clipped to
  [-0.5, 1.5];
* ``text-only``: the paper's RL-without-tools ablation: format and rank terms only, and a tool call is
  not a well-tagged turn.

Turns are judged by the protocol's own parser (:func:`vretrver.protocol.parse_turn`), so a turn the
harness accepted is a turn the reward accepts. The number of valid tool calls is what the harness (or
the RL rollout) recorded, never re-derived from the text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vretrver.protocol import ParsedTurn, parse_turn


@dataclass(frozen=True)
class RewardSettings:
    alpha: float = 0.2  # weight of r_format
    beta: float = 0.8  # weight of r_rank
    sigma: float = 1.0  # width of the rank Gaussian
    k_r: int | None = 5  # positions beyond this earn no rank reward; None: no cut-off
    eta: float = 0.2  # bonus for ranking the ground truth first after at least one valid tool call
    rho: float = 0.1  # penalty per valid tool call beyond tau
    tau: int = 1  # free valid tool calls
    tools: bool = True  # False: text-only (no tool term; a tool-call turn is not well-tagged)
    # Group curiosity bonus (public variant): weight * (threshold - group rate) for a trajectory with a
    # valid tool call, when the share of its GRPO group that made a valid tool call is below threshold.
    curiosity_weight: float = 0.0
    curiosity_threshold: float = 0.6
    clip_min: float | None = None
    clip_max: float | None = None

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"RewardSettings.sigma: expected > 0, got {self.sigma}")
        if self.k_r is not None and self.k_r < 1:
            raise ValueError(f"RewardSettings.k_r: expected >= 1 or None, got {self.k_r}")
        if self.tau < 0:
            raise ValueError(f"RewardSettings.tau: expected >= 0, got {self.tau}")
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ValueError(f"RewardSettings: clip_min {self.clip_min} > clip_max {self.clip_max}")


VARIANTS: dict[str, RewardSettings] = {
    "eapo": RewardSettings(),
    "public": RewardSettings(
        alpha=0.3,
        beta=0.7,
        k_r=None,
        eta=0.0,
        rho=0.05,
        tau=1,
        curiosity_weight=0.6,
        curiosity_threshold=0.6,
        clip_min=-0.5,
        clip_max=1.5,
    ),
    "text-only": RewardSettings(eta=0.0, rho=0.0, tools=False),
}
DEFAULT_VARIANT = "eapo"


def reward_settings(variant: str | RewardSettings = DEFAULT_VARIANT, **overrides: Any) -> RewardSettings:
    """The settings of a named variant, with any constant overridden (``k_r=None`` removes the cut-off)."""
    if isinstance(variant, RewardSettings):
        base = variant
    else:
        key = str(variant).strip().lower().replace("_", "-")
        key = {"paper": "eapo", "text": "text-only", "notool": "text-only", "no-tools": "text-only"}.get(
            key, key
        )
        if key not in VARIANTS:
            raise ValueError(f"unknown reward variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        base = VARIANTS[key]
    known = {f.name for f in fields(RewardSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown reward settings {unknown}: expected some of {sorted(known)}")
    return replace(base, **overrides) if overrides else base


# --------------------------------------------------------------------------- terms


def format_term(turns: Sequence[ParsedTurn], tools: bool = True) -> float:
    """0.5 * [every turn well-tagged] + 0.5 * [the final answer is a list of integers]; 0 without answer."""
    if not turns or turns[-1].kind != "answer":
        return 0.0
    tagged = all(t.well_formed and (tools or t.kind == "answer") for t in turns)
    return 0.5 * float(tagged) + 0.5 * float(turns[-1].answer_is_int_list)


def listed_ranking(answer: Sequence[int] | None, num_candidates: int | None = None) -> list[int]:
    """The candidates an answer lists, in order: duplicates and out-of-range numbers dropped (as the
    harness drops them); candidates it omits are NOT appended, because an omitted ground truth earns no
    rank reward."""
    seen: set[int] = set()
    out: list[int] = []
    for n in answer or []:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            continue
        if num_candidates is not None and n > num_candidates:
            continue
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def ground_truth_position(
    answer: Sequence[int] | None, ground_truth: Iterable[int], num_candidates: int | None = None
) -> int | None:
    """1-based position of the best-placed ground-truth candidate in the answer, or None if not listed."""
    gt = set(ground_truth)
    for pos, n in enumerate(listed_ranking(answer, num_candidates), 1):
        if n in gt:
            return pos
    return None


def rank_term(k: int | None, sigma: float = 1.0, k_r: int | None = 5) -> float:
    """exp(-(k - 1)^2 / (2 sigma^2)); 0 for no position or a position beyond ``k_r``."""
    if k is None or k < 1 or (k_r is not None and k > k_r):
        return 0.0
    return math.exp(-((k - 1) ** 2) / (2.0 * sigma**2))


def tool_term(k: int | None, n_valid: int, eta: float = 0.2, rho: float = 0.1, tau: int = 1) -> float:
    """eta * [k = 1] * [N_valid > 0] - rho * max(0, N_valid - tau)."""
    bonus = eta if (k == 1 and n_valid > 0) else 0.0
    return bonus - rho * max(0, n_valid - tau)


def _clip(x: float, s: RewardSettings) -> float:
    if s.clip_min is not None:
        x = max(s.clip_min, x)
    if s.clip_max is not None:
        x = min(s.clip_max, x)
    return x


# --------------------------------------------------------------------------- trajectories


@dataclass
class RewardBreakdown:
    """The score and its terms. Every field is a number, so the dict can be logged per step."""

    score: float
    format: float
    rank: float
    tool: float
    curiosity: float
    position: int  # 1-based position of the ground truth in the answer; 0 when not listed / no answer
    answered: int
    well_formed: int  # every turn well-tagged
    n_turns: int
    n_valid_calls: int
    n_invalid_calls: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score_trajectory(
    turns: Sequence[str | ParsedTurn],
    ground_truth: int | Iterable[int],
    n_valid_calls: int,
    n_invalid_calls: int = 0,
    num_candidates: int | None = None,
    settings: RewardSettings | str = DEFAULT_VARIANT,
) -> RewardBreakdown:
    """The reward of one trajectory, from its assistant turns (texts or parsed) and recorded tool counts.

    ``ground_truth``: the positive's candidate number (1-based), or several; the best-placed one counts.
    The group curiosity bonus of the ``public`` variant is not included (see :func:`group_curiosity_bonus`).
    """
    s = reward_settings(settings)
    if isinstance(n_valid_calls, bool) or not isinstance(n_valid_calls, int) or n_valid_calls < 0:
        raise ValueError(f"n_valid_calls: expected a count >= 0, got {n_valid_calls!r}")
    gt = [ground_truth] if isinstance(ground_truth, int) else [int(g) for g in ground_truth]
    parsed = [t if isinstance(t, ParsedTurn) else parse_turn(t) for t in turns]
    answered = bool(parsed) and parsed[-1].kind == "answer"
    answer = parsed[-1].answer if answered else None
    k = ground_truth_position(answer, gt, num_candidates) if answered else None
    n_valid = n_valid_calls if s.tools else 0
    r_format = format_term(parsed, tools=s.tools)
    r_rank = rank_term(k, s.sigma, s.k_r)
    r_tool = tool_term(k, n_valid, s.eta, s.rho, s.tau) if s.tools else 0.0
    total = _clip(s.alpha * r_format + s.beta * r_rank + r_tool, s)
    return RewardBreakdown(
        score=total,
        format=r_format,
        rank=r_rank,
        tool=r_tool,
        curiosity=0.0,
        position=k or 0,
        answered=int(answered),
        well_formed=int(bool(parsed) and all(t.well_formed for t in parsed)),
        n_turns=len(parsed),
        n_valid_calls=n_valid_calls,
        n_invalid_calls=n_invalid_calls,
    )


def score_episode(episode: Any, settings: RewardSettings | str = DEFAULT_VARIANT) -> RewardBreakdown:
    """The reward of a finished :class:`vretrver.episode.Episode` (ground truth: the sample's positives)."""
    turns = [t.parsed for t in episode.turns if t.role == "assistant" and t.parsed is not None]
    return score_trajectory(
        turns,
        episode.sample.positive_numbers(),
        episode.n_valid_calls,
        episode.n_invalid_calls,
        num_candidates=episode.k,
        settings=settings,
    )


def group_curiosity_bonus(
    used_valid_tool: Sequence[bool], settings: RewardSettings | str = "public"
) -> list[float]:
    """The curiosity bonus of each trajectory of one GRPO group (the rollouts of one prompt).

    rate = share of the group with at least one valid tool call; a trajectory with one gets
    ``curiosity_weight * (curiosity_threshold - rate)`` when rate < threshold, otherwise nothing.
    """
    s = reward_settings(settings)
    if not used_valid_tool or s.curiosity_weight == 0:
        return [0.0] * len(used_valid_tool)
    rate = sum(bool(u) for u in used_valid_tool) / len(used_valid_tool)
    bonus = s.curiosity_weight * (s.curiosity_threshold - rate) if rate < s.curiosity_threshold else 0.0
    return [bonus if u else 0.0 for u in used_valid_tool]


def apply_group_curiosity(
    group: Sequence[RewardBreakdown], settings: RewardSettings | str = "public"
) -> list[RewardBreakdown]:
    """Add the curiosity bonus to the breakdowns of one GRPO group (new objects; total re-clipped)."""
    s = reward_settings(settings)
    bonus = group_curiosity_bonus([b.n_valid_calls > 0 for b in group], s)
    out = []
    for b, c in zip(group, bonus, strict=True):
        raw = s.alpha * b.format + s.beta * b.rank + b.tool + c
        out.append(replace(b, curiosity=c, score=_clip(raw, s)))
    return out
