"""One reranking conversation as a small state machine.

Feed it the model's turns with :meth:`Episode.step`; it runs the tools, appends the observations to the
conversation and ends with a final ranking (a full permutation of the candidate numbers). It counts
valid and invalid tool calls and keeps the whole trajectory for the viewer and for SFT export.

The rules live in :class:`TurnRule`, which the verl agent loop
(:mod:`vretrver.integrations.verl.agent_loop`) drives too, so evaluation and RL rollouts decide every turn
the same way (the paper's multi-turn reranking call):

* at most ``max_tool_calls`` tool calls (valid or not); a tool call after that ends the episode with no
  answer;
* a turn with neither a tool call nor an answer ends the episode with no answer;
* an episode with no answer keeps the prior order of the candidates as its ranking;
* the answer is normalised: duplicates and out-of-range numbers dropped, omitted candidates appended in
  their prior order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vretrver.protocol import (
    Conversation,
    ImageLike,
    ParsedTurn,
    ToolCall,
    build_conversation,
    load_profile,
    normalize_ranking,
    observation_message,
    parse_turn,
)
from vretrver.protocol.profile import Profile
from vretrver.samples import Sample, safe_name
from vretrver.tools import ToolConfig, ToolResult, image_table, run_tool


@dataclass
class Turn:
    role: str  # "assistant" | "tool"
    text: str
    parsed: ParsedTurn | None = None  # assistant turns
    tool: ToolResult | None = None  # tool turns
    images: list[Image.Image] = field(default_factory=list)  # images the tool returned


@dataclass
class StepResult:
    kind: str  # "observation" | "answer" | "ended"
    parts: list[dict[str, Any]] = field(default_factory=list)  # the observation's message parts
    images: list[Image.Image] = field(default_factory=list)


ANSWER, TOOL_CALL, END = "answer", "tool_call", "end"


@dataclass
class TurnDecision:
    """What the protocol does with one assistant turn: ``kind`` is ``"answer"`` (the episode ends with
    the turn's answer), ``"end"`` (it ends without one, for ``end_reason``) or ``"tool_call"`` (run
    ``call``, then show the observation :meth:`TurnRule.observe` renders)."""

    kind: str
    parsed: ParsedTurn
    call: ToolCall | None = None
    end_reason: str | None = None


class TurnRule:
    """The episode rule, one copy for evaluation and RL: what a turn may do, when the episode ends, and
    what the model sees after a tool call. It counts the tool calls, valid or not, against the budget.

    * the profile's action rule reads the turn (:meth:`Profile.turn_action`): an answer ends the episode,
      a malformed turn ends it without an answer;
    * a tool call beyond ``max_tool_calls`` (or under a profile without tools) ends it without an answer;
    * any other tool call runs (by the caller), and its result comes back through the profile's
      observation template.
    """

    def __init__(self, profile: Profile, max_tool_calls: int):
        self.profile = profile
        self.max_tool_calls = max_tool_calls
        self.n_valid_calls = 0
        self.n_invalid_calls = 0

    @property
    def n_tool_calls(self) -> int:
        return self.n_valid_calls + self.n_invalid_calls

    def decide(self, text: str) -> TurnDecision:
        parsed = parse_turn(text)
        kind, call, reason = self.profile.turn_action(text, parsed)
        if kind == "answer":
            return TurnDecision(ANSWER, parsed, end_reason="answer")
        if kind == "malformed":
            return TurnDecision(END, parsed, end_reason="malformed turn: " + (reason or ""))
        if not self.profile.uses_tools or self.n_tool_calls >= self.max_tool_calls:
            return TurnDecision(END, parsed, end_reason="tool call beyond the budget")
        return TurnDecision(TOOL_CALL, parsed, call=call)

    def observe(self, result: ToolResult) -> tuple[list[dict[str, Any]], list[ImageLike]]:
        """Count a tool call's result; the message parts (and images) the model sees next."""
        if result.valid:
            self.n_valid_calls += 1
        else:
            self.n_invalid_calls += 1
        return observation_message(
            self.profile, result.tool, result.indices, result.images, result.error, result.valid
        )


class Episode:
    """A reranking conversation over ``sample.candidates`` (numbered 1..K in their current order)."""

    def __init__(
        self,
        sample: Sample,
        profile: Profile | str = "v-retrver",
        tool_config: ToolConfig | None = None,
        max_tool_calls: int | None = None,
        load: Callable[[str], ImageLike] | None = None,
    ):
        """``load``: turns an image path into the image to use (a cache shared by the windows of a
        query decodes each file once); it must give the same pixels :func:`vretrver.images.load_image`
        would, and may return the path itself when the file does not open (the engine then fails the
        turn, as without it)."""
        self.sample = sample
        self.profile = load_profile(profile)
        # The profile says whose tool server the tools imitate (error texts, checks).
        self.tool_config = (tool_config or ToolConfig()).for_profile(self.profile)
        budget = self.profile.max_tool_calls if max_tool_calls is None else max_tool_calls
        self.rule = TurnRule(self.profile, budget)
        self.conversation: Conversation = build_conversation(
            sample, self.profile, self.tool_config.coordinates, budget
        )
        self.turns: list[Turn] = []
        self.answer: list[int] | None = None  # the model's answer, as parsed
        self.ranking: list[int] | None = None  # the normalised permutation, once done
        self.done = False
        self.failed: str | None = None  # engine failure reason
        self.end_reason: str | None = None
        slots: list[ImageLike | None] = list(self.profile.tool_images(sample.image_paths()))
        if load is not None:
            self.conversation.images = [
                load(x) if isinstance(x, str) else x for x in self.conversation.images
            ]
            slots = [load(x) if isinstance(x, str) else x for x in slots]
        self._images = image_table(slots)

    @property
    def k(self) -> int:
        return len(self.sample.candidates)

    @property
    def max_tool_calls(self) -> int:
        return self.rule.max_tool_calls

    @property
    def n_valid_calls(self) -> int:
        return self.rule.n_valid_calls

    @property
    def n_invalid_calls(self) -> int:
        return self.rule.n_invalid_calls

    @property
    def n_tool_calls(self) -> int:
        return self.rule.n_tool_calls

    @property
    def answered(self) -> bool:
        return self.answer is not None

    def _finish(self, reason: str) -> None:
        self.done = True
        self.end_reason = reason
        self.ranking = normalize_ranking(self.answer, self.k)

    def step(self, text: str) -> StepResult:
        """Give the model's turn; get the observation to show next, or the end of the episode."""
        if self.done:
            raise RuntimeError("the episode has ended")
        decision = self.rule.decide(text)
        self.turns.append(Turn("assistant", text, parsed=decision.parsed))
        self.conversation.add_assistant(text)
        if decision.kind == ANSWER:
            self.answer = decision.parsed.answer
            self._finish(decision.end_reason)
            return StepResult("answer")
        if decision.kind == END:
            self._finish(decision.end_reason)
            return StepResult("ended")
        result = run_tool(decision.call, self._images, self.tool_config, self.profile.tools)
        parts, shown = self.rule.observe(result)
        self.conversation.add_user(parts, shown)
        obs_text = "".join(p.get("text", "") if p["type"] == "text" else "<image>" for p in parts)
        self.turns.append(Turn("tool", obs_text, tool=result, images=list(result.images)))
        return StepResult("observation", parts, list(result.images))

    def fail(self, reason: str) -> None:
        """The engine could not produce a turn: the episode ends, marked failed, in prior order."""
        self.failed = reason
        self._finish("engine failure: " + reason)

    # ------------------------------------------------------------------ records

    def ranked_ids(self) -> list[str]:
        order = self.ranking or list(range(1, self.k + 1))
        return [self.sample.candidates[i - 1].id for i in order]

    def to_record(self, image_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """A JSON-able trajectory; tool images are saved under ``image_dir`` (paths relative to it)."""
        turns = []
        for n, t in enumerate(self.turns):
            row: dict[str, Any] = {"role": t.role, "text": t.text}
            if t.parsed is not None:
                p = asdict(t.parsed)
                row["parsed"] = {
                    k: p[k] for k in ("kind", "well_formed", "answer", "answer_is_int_list", "problems")
                }
                if t.parsed.tool_call is not None:
                    row["parsed"]["tool_call"] = {
                        "name": t.parsed.tool_call.name,
                        "arguments": t.parsed.tool_call.arguments,
                        "error": t.parsed.tool_call.error,
                    }
            if t.tool is not None:
                row["tool"] = {
                    "name": t.tool.tool,
                    "valid": t.tool.valid,
                    "indices": t.tool.indices,
                    "error": t.tool.error,
                    "box": list(t.tool.box) if t.tool.box else None,
                }
                if image_dir is not None and t.images:
                    folder = Path(image_dir)
                    folder.mkdir(parents=True, exist_ok=True)
                    names = []
                    # One folder serves every task of a run, and tasks may reuse query ids (GeneCIS):
                    # the task is part of the name.
                    stem = safe_name(self.sample.task, self.sample.id)
                    for j, img in enumerate(t.images):
                        name = f"{stem}_w{self.sample.meta.get('window_start', 0)}_t{n}_{j}.png"
                        img.save(folder / name)
                        names.append(name)
                    row["images"] = names
            turns.append(row)
        return {
            "sample_id": self.sample.id,
            "profile": self.profile.name,
            "turns": turns,
            "answer": self.answer,
            "ranking": self.ranking,
            "ranked_ids": self.ranked_ids(),
            "n_valid_calls": self.n_valid_calls,
            "n_invalid_calls": self.n_invalid_calls,
            "end_reason": self.end_reason,
            "failed": self.failed,
        }


def dumps_record(record: dict[str, Any]) -> str:
    """One JSON line of a record; text UTF-8 cannot encode (a lone surrogate) is escaped and listed."""
    from vretrver.jsonl import dumps_line

    return dumps_line(record)
