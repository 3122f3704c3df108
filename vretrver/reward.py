"""The RL reward: EAPO (the paper's evidence-aligned reward) and its named variants.

    R = alpha * r_format + beta * r_rank + r_tool       (the paper: alpha = 0.2, beta = 0.8)

* ``r_format = 0.5 * [every assistant turn is well tagged and the trajectory ends with an answer]
  + 0.5 * [the final answer is a non-empty bracketed list of integers]``. The halves are independent.
  Well tagged: ``<think>...</think>`` then exactly one ``<tool_call>...</tool_call>`` or
  ``<answer>...</answer>`` (:attr:`vretrver.protocol.ParsedTurn.well_tagged`); what a tool call holds
  (broken JSON, an unknown tool) makes it an invalid call, not a tag failure. An answer without its
  closing ``</answer>`` (a truncated generation) is no answer.
* ``r_rank = exp(-(k - 1)^2 / (2 sigma^2))`` with k the 1-based position of the first occurrence of the
  ground truth among the integers the answer writes (duplicates and out-of-range numbers occupy
  positions); 0 beyond ``k_r``, when the ground truth is not listed, or without an answer.
* ``r_tool = eta * [k = 1] * [N_valid > 0] - rho * max(0, N_valid - tau)``.

Variants, selectable by name (:data:`VARIANTS`):

* ``eapo`` (default): the paper's constants, maximum 1.2 (ranked first with exactly one valid tool call);
* ``public``: the reward the public training code computes, format and rank read its way from the whole
  decoded response (:func:`public_format_and_ranking`): weights 0.3 / 0.7, no cut-off, a penalty of 0.05
  per valid call beyond the first, a group "curiosity" bonus (:func:`group_curiosity_bonus`), clipped to
  [-0.5, 1.5];
* ``text-only``: the paper's RL-without-tools ablation: format and rank terms only, and a tool call is
  not a well-tagged turn.

Turns are judged by the protocol's own parser (:func:`vretrver.protocol.parse_turn`), so a turn the
harness accepted is a turn the reward accepts. The number of valid tool calls is what the harness (or
the RL rollout) recorded, never re-derived from the text.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vretrver.protocol import ParsedTurn, parse_turn

SCORINGS = ("paper", "public")


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
    # How format and rank are read: "paper", each assistant turn by the protocol's parser; "public", the
    # whole decoded response the public training code's way (public_format_and_ranking).
    scoring: str = "paper"

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"RewardSettings.scoring: expected one of {SCORINGS}, got {self.scoring!r}")
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
        scoring="public",
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


def ends_with_answer(turns: Sequence[ParsedTurn]) -> bool:
    """The trajectory's last turn is an answer with its closing tag (a truncated one is no answer)."""
    return bool(turns) and turns[-1].kind == "answer" and turns[-1].closed


def format_term(turns: Sequence[ParsedTurn], tools: bool = True, answered: bool | None = None) -> float:
    """0.5 * [every turn well tagged, ending with an answer] + 0.5 * [the final answer is a non-empty
    bracketed list of integers]; 0 without an answer. ``answered``: whether the harness ended the
    trajectory on the last turn's answer (default: whether that turn is a closed answer)."""
    if not (ends_with_answer(turns) and (answered is None or answered)):
        return 0.0
    tagged = all(t.well_tagged and (tools or t.kind == "answer") for t in turns)
    return 0.5 * float(tagged) + 0.5 * float(turns[-1].answer_is_int_list)


def ground_truth_position(answer: Sequence[Any] | None, ground_truth: Iterable[int]) -> int | None:
    """1-based position of the first entry of the answer, as written, that is a ground-truth candidate
    (several positives: the best placed counts); None if none is listed."""
    gt = list(ground_truth)
    for pos, n in enumerate(answer or [], 1):
        if any(n == g for g in gt):  # == as Python compares: the public reading may hold True for 1
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


# --------------------------------------------------------------------------- the public code's reading

# The public code reads the decoded response with the `regex` module, whose \d is any Unicode decimal
# digit; Python's re.\d is the same class, and int() reads every such digit.
_PUBLIC_DIGITS = re.compile(r"\d+")


def _public_tags(response: str) -> bool:
    """The public code's format check: the WHOLE response fully matches
    ``<think>(.*?)</think>.*<answer>(.*?)</answer>.*`` (dot matching newlines), i.e. it starts with
    ``<think>`` and a ``</think>``, an ``<answer>`` and an ``</answer>`` follow in that order."""
    if not response.startswith("<think>"):
        return False
    i = response.find("</think>", len("<think>"))
    j = response.find("<answer>", i + len("</think>")) if i >= 0 else -1
    return j >= 0 and response.find("</answer>", j + len("<answer>")) >= 0


def _public_ranking(response: str) -> tuple[list[Any] | None, bool]:
    """The public code's answer parse: (ranking, written as a Python list of ints).

    The first ``<answer>...</answer>`` of the response; stripped text in brackets that is a Python list
    whose items are all ``int`` (``True`` is one) is taken as it is; otherwise every run of digits is a
    number. Any failure on the way (a bracketed text that is no Python literal, such as ``[7, 1, two]``)
    means no ranking at all. The public code evaluates the bracketed text as Python code; this reads it
    as a literal only, so the two differ only on expressions (``[1+1]``, ``[--1]``).
    """
    start = response.find("<answer>")
    end = response.find("</answer>", start + len("<answer>")) if start >= 0 else -1
    if end < 0:
        return None, False
    content = response[start + len("<answer>") : end].strip()
    try:
        if content.startswith("[") and content.endswith("]"):
            value = ast.literal_eval(content)
            if isinstance(value, list) and all(isinstance(x, int) for x in value):
                return value, True
        digits = _PUBLIC_DIGITS.findall(content)
        if digits:
            return [int(d) for d in digits], False
    except Exception:  # the public code swallows every failure of this parse
        pass
    return None, False


def public_format_and_ranking(response: str) -> tuple[float, list[Any] | None, bool]:
    """(r_format, ranking or None, tags ok) as the public training code reads a decoded response:
    0.5 for the tag check, and 0.5 more only when it passes and the answer is a list of ints. The rank
    term is read from the ranking whether or not the tags pass."""
    tags = _public_tags(response)
    ranking, is_list = _public_ranking(response)
    return 0.5 * tags + 0.5 * (tags and is_list), ranking, tags


def decoded_response(messages: Sequence[dict[str, Any]]) -> str:
    """The response part of a conversation as verl hands it to a reward: rendered by a Qwen-VL chat
    template and decoded with ``skip_special_tokens=True``.

    Everything from the first assistant message on; ``<|im_start|>`` / ``<|im_end|>`` and the image
    tokens vanish, leaving the role names and the newlines around them:
    ``turn 1\nuser\n<observation text>\nassistant\nturn 2``.
    """
    out: list[str] = []
    for m in messages:
        if m.get("role") != "assistant" and not out:
            continue  # the prompt
        content = m.get("content")
        if not isinstance(content, str):
            content = "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
        out.append(content if m["role"] == "assistant" else f"\n{m['role']}\n{content}\nassistant\n")
    return "".join(out)


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
    well_formed: int  # every turn well tagged (public: the public code's tag check)
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
    response: str | None = None,
    answered: bool | None = None,
) -> RewardBreakdown:
    """The reward of one trajectory, from its assistant turns (texts or parsed) and recorded tool counts.

    ``ground_truth``: the positive's candidate number (1-based), or several; the best-placed one counts.
    ``response``: the decoded response (tool results included) the ``public`` scoring reads; a single
    text turn stands for itself. ``answered``: whether the harness took the last turn as the final
    answer (default: it is a closed answer). ``num_candidates`` is kept for callers; positions count
    every entry as written. The group curiosity bonus of the ``public`` variant is not included (see
    :func:`group_curiosity_bonus`).
    """
    s = reward_settings(settings)
    if isinstance(n_valid_calls, bool) or not isinstance(n_valid_calls, int) or n_valid_calls < 0:
        raise ValueError(f"n_valid_calls: expected a count >= 0, got {n_valid_calls!r}")
    gt = [ground_truth] if isinstance(ground_truth, int) else [int(g) for g in ground_truth]
    n_valid = n_valid_calls if s.tools else 0
    if s.scoring == "public":
        if response is None:
            if len(turns) != 1 or not isinstance(turns[0], str):
                raise ValueError(
                    "score_trajectory: the public scoring reads the whole decoded response (tool results "
                    "included): pass response=..."
                )
            response = turns[0]
        r_format, ranking, tags = public_format_and_ranking(response)
        k = ground_truth_position(ranking, gt)
        done, tagged = int(ranking is not None), int(tags)
    else:
        parsed = [t if isinstance(t, ParsedTurn) else parse_turn(t) for t in turns]
        done = ends_with_answer(parsed) and (answered is None or bool(answered))
        k = ground_truth_position(parsed[-1].answer, gt) if done else None
        r_format = format_term(parsed, tools=s.tools, answered=done)
        tagged = int(bool(parsed) and all(t.well_tagged for t in parsed))
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
        answered=int(done),
        well_formed=tagged,
        n_turns=len(turns),
        n_valid_calls=n_valid_calls,
        n_invalid_calls=n_invalid_calls,
    )


def score_episode(episode: Any, settings: RewardSettings | str = DEFAULT_VARIANT) -> RewardBreakdown:
    """The reward of a finished :class:`vretrver.episode.Episode` (ground truth: the sample's positives)."""
    s = reward_settings(settings)
    turns = [t.parsed for t in episode.turns if t.role == "assistant" and t.parsed is not None]
    return score_trajectory(
        turns,
        episode.sample.positive_numbers(),
        episode.n_valid_calls,
        episode.n_invalid_calls,
        num_candidates=episode.k,
        settings=s,
        response=decoded_response(episode.conversation.messages) if s.scoring == "public" else None,
        answered=episode.answer is not None,
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
