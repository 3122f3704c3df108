"""``vretrver_agent``: the multi-turn agent loop that plays our reranking protocol inside verl.

verl's own ``ToolAgentLoop`` cannot apply our prompt exactly: it renders the chat template with
``tools=`` (Qwen3-VL's template then adds a second tool block to our system prompt), sends tool results
as ``tool`` messages (Qwen2.5-VL's template has no such role), and parses calls with its own parser.
This loop instead drives :class:`vretrver.episode.TurnRule`, the rule evaluation's
:class:`vretrver.episode.Episode` drives:

* the prompt is the parquet's conversation (our system prompt already declares the tools), rendered by
  the checkpoint's chat template with no ``tools=`` argument, with the original images, as evaluation does;
* the rule reads each assistant turn (:meth:`vretrver.episode.TurnRule.decide`: the profile's action rule
  over :func:`vretrver.protocol.parse_turn`); the profile's tool dialect decides how a call is checked and
  which error texts come back (:class:`vretrver.tools.ToolConfig`); generation stops at ``</tool_call>``
  as the evaluation engines do, and the token the chat template closes the turn with is added as context
  (loss mask 0);
* an answer or a malformed turn ends the trajectory; a tool call beyond the budget (valid or not) ends it
  with no answer; otherwise the tool runs (a verl tool of :mod:`.tools` for every tool of the sample's
  profile, hence :mod:`vretrver.tools`), and its result, rendered by the rule
  (:meth:`vretrver.episode.TurnRule.observe`), comes back as a user message with one image part per
  returned image;
* observation tokens and the chat template's turn boundaries have loss mask 0; only tokens the model
  generated have mask 1.

What the rollout did is recorded in ``extra_fields["vretrver_rollout"]`` (the assistant turns as
generated, valid / invalid tool-call counts, why it ended); verl hands it to the reward function as
``extra_info["vretrver_rollout"]``, so the reward never re-derives tool counts from the text.

Register it with ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` pointing at a yaml holding
``- {name: vretrver_agent, _target_: vretrver.integrations.verl.agent_loop.VRetrverAgentLoop}`` (extra keys
are constructor settings, e.g. ``max_tool_calls: 2``), or by importing this module.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, ToolListWrap, register

from vretrver.episode import TOOL_CALL, TurnRule
from vretrver.integrations.verl import AGENT_NAME, ROLLOUT_RECORD_KEY, SAMPLE_INFO_KEY
from vretrver.integrations.verl.tools import tool_for
from vretrver.protocol import Profile, ToolCall, load_profile
from vretrver.tools import ToolConfig, ToolResult, image_table, load_image, resolve_call

logger = logging.getLogger(__file__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

TOOL_CALL_END = "</tool_call>"
IM_END = "<|im_end|>"


@dataclass
class RolloutSpec:
    """The per-sample settings the RL parquet carries in ``extra_info["vretrver"]``."""

    profile: str
    coordinates: str
    max_tool_calls: int
    num_candidates: int
    image_map: list[int]

    @classmethod
    def from_extra_info(cls, extra_info: Any) -> RolloutSpec:
        info = (extra_info or {}).get(SAMPLE_INFO_KEY) if isinstance(extra_info, dict) else None
        if not isinstance(info, dict):
            raise ValueError(
                f"{AGENT_NAME}: extra_info has no '{SAMPLE_INFO_KEY}' settings; build the RL data with "
                "`vretrver rl data build` (vretrver.integrations.verl.dataset)"
            )
        try:
            return cls(
                profile=str(info["profile"]),
                coordinates=str(info["coordinates"]),
                max_tool_calls=int(info["max_tool_calls"]),
                num_candidates=int(info["num_candidates"]),
                image_map=[int(p) for p in info["image_map"]],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{AGENT_NAME}: extra_info['{SAMPLE_INFO_KEY}'] is incomplete ({e!r})") from None


def _single_token_id(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


@dataclass
class _Trajectory:
    """One rollout as it grows: the token ids (prompt and response), the response's loss mask and
    log-probs, the images so far, the chat messages and the assistant turns as generated."""

    ids: list[int]
    messages: list[dict[str, Any]]
    images: list[Any]
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    turns: list[str] = field(default_factory=list)
    n_observations: int = 0
    extra_fields: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=lambda: {"generate_sequences": 0.0, "tool_calls": 0.0})


_PIL_LOCK = threading.Lock()


def _load_part_image(part: dict[str, Any]) -> Any:
    """A private, fully loaded RGB copy of a prompt image.

    The rollouts of one prompt share its parts (verl repeats the batch by reference) and a PIL image opened
    by the dataset decodes lazily, so images are decoded afresh from their bytes, or copied under a lock.
    """
    # load_image: the same preparation as evaluation (upright, transparent parts on white, size cap).
    if part.get("bytes") is not None:
        return load_image(io.BytesIO(part["bytes"]))
    src = part.get("image")
    if src is None:
        raise ValueError(f"{AGENT_NAME}: an image part of the prompt has no image")
    if isinstance(src, Image.Image):
        with _PIL_LOCK:
            return load_image(src).copy()
    return load_image(src)


def prompt_messages(raw_prompt: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The prompt as chat messages with loaded images (originals, not resized), and those images."""
    messages: list[dict[str, Any]] = []
    images: list[Any] = []
    for m in raw_prompt:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    img = _load_part_image(part)
                    images.append(img)
                    parts.append({"type": "image", "image": img})
                elif part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                else:
                    raise ValueError(f"{AGENT_NAME}: unsupported prompt part {part.get('type')!r}")
            content = parts
        messages.append({"role": m["role"], "content": content})
    return messages, images


@register(AGENT_NAME)
class VRetrverAgentLoop(AgentLoopBase):
    def __init__(
        self,
        *args: Any,
        tools: ToolListWrap | None = None,
        max_tool_calls: int | None = None,
        stop_at_tool_call: bool = True,
        **kwargs: Any,
    ):
        kwargs.pop("name", None)  # the registry entry's own name, passed along by hydra
        super().__init__(*args, **kwargs)
        self.tools = {t.name: t for t in (tools.tools if tools else [])}
        self.max_tool_calls = max_tool_calls
        self.response_length = self.rollout_config.response_length
        from vretrver.families import family_of_processor  # the token that closes the family's turns

        self.im_end_id = _single_token_id(self.tokenizer, family_of_processor(self.processor).turn_end_token)
        self.tool_call_end_id = _single_token_id(self.tokenizer, TOOL_CALL_END) if stop_at_tool_call else None
        if stop_at_tool_call and self.tool_call_end_id is None:
            logger.warning(
                "%s is not one token for this tokenizer: tool-call turns end at EOS", TOOL_CALL_END
            )
        self.tool_config = (
            ToolConfig.from_processor(self.processor) if self.processor is not None else ToolConfig()
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        spec = RolloutSpec.from_extra_info(kwargs.get("extra_info"))
        profile = load_profile(spec.profile)
        rule = TurnRule(
            profile, self.max_tool_calls if self.max_tool_calls is not None else spec.max_tool_calls
        )
        if profile.uses_tools and spec.coordinates != self.tool_config.coordinates:
            raise ValueError(
                f"{AGENT_NAME}: the RL data was built for {spec.coordinates} crop coordinates but the model's "
                f"processor uses {self.tool_config.coordinates}; rebuild it with the matching --model-family"
            )
        tool_config = self.tool_config.for_profile(profile)  # the profile's tool dialect
        tools = self._tools_for(spec.profile, profile)
        tools_kwargs = kwargs.get("tools_kwargs") or {}
        messages, images = await self.loop.run_in_executor(None, prompt_messages, kwargs["raw_prompt"])
        table = image_table([images[p] if 0 <= p < len(images) else None for p in spec.image_map])

        async def call_tool(call: ToolCall) -> ToolResult:
            return await self._call_tool(call, table, tools, tools_kwargs, profile.tools, tool_config)

        prompt_ids = await self.ct_build_initial_tokens(messages, tools=None, images=images or None)
        traj = _Trajectory(ids=list(prompt_ids), messages=messages, images=list(images))
        end_reason = await self._play(traj, rule, sampling_params, call_tool)
        return self._output(traj, rule, spec, end_reason)

    def _tools_for(self, profile_ref: str, profile: Profile) -> dict[str, Any]:
        """A verl tool per tool of the profile: the tool config's, else one built from the tool registry."""
        return {name: self.tools.get(name) or tool_for(profile_ref, name) for name in profile.tools}

    async def _play(
        self,
        traj: _Trajectory,
        rule: TurnRule,
        sampling_params: dict[str, Any],
        call_tool: Callable[[ToolCall], Awaitable[ToolResult]],
    ) -> str:
        """Generate turns and run tools until the rule ends the episode or the response budget is spent;
        returns why it ended."""
        request_id = uuid4().hex
        while True:
            if len(traj.mask) >= self.response_length:
                return "response length"
            text, stop_reason = await self._generate(
                traj, sampling_params, request_id, rule.profile.uses_tools
            )
            decision = rule.decide(text)
            if stop_reason == "aborted":
                return "aborted"
            if decision.kind != TOOL_CALL:
                return decision.end_reason
            if len(traj.mask) >= self.response_length:
                return "response length"
            t0 = time.perf_counter()
            result = await call_tool(decision.call)
            traj.timing["tool_calls"] += time.perf_counter() - t0
            parts, shown = rule.observe(result)
            if not await self._add_observation(traj, text, parts, shown):
                return "response length"  # no room for the observation: the trajectory ends unanswered

    async def _generate(
        self, traj: _Trajectory, sampling_params: dict[str, Any], request_id: str, uses_tools: bool
    ) -> tuple[str, str | None]:
        """One assistant turn appended to the trajectory (loss mask 1); its text and why generation stopped."""
        # Cap the turn by what is left of the response budget, so the reward never scores text that is
        # cut from the training sequence.
        params = {**sampling_params, "max_tokens": self.response_length - len(traj.mask)}
        if self.tool_call_end_id is not None and uses_tools:
            stops = set(params.get("stop_token_ids") or []) | {self.tool_call_end_id}
            params["stop_token_ids"] = sorted(stops)
        t0 = time.perf_counter()
        out = await self.server_manager.generate(
            request_id=request_id, prompt_ids=traj.ids, sampling_params=params, image_data=traj.images or None
        )
        traj.timing["generate_sequences"] += time.perf_counter() - t0
        if not traj.extra_fields:
            traj.extra_fields.update(out.extra_fields or {})
        if out.log_probs and traj.logprobs is None:
            traj.logprobs = [0.0] * len(traj.mask)
        merge, traj.mask, new_logprobs = await self.ct_merge_assistant_token(
            traj.ids,
            out.token_ids,
            traj.mask,
            traj.logprobs,
            assistant_logprobs=out.log_probs if traj.logprobs is not None else None,
        )
        traj.ids = merge.token_ids
        traj.logprobs = new_logprobs if traj.logprobs is not None else None
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        traj.turns.append(text)
        return text, out.stop_reason

    async def _add_observation(
        self, traj: _Trajectory, text: str, parts: list[dict[str, Any]], shown: list[Any]
    ) -> bool:
        """Append the turn's end and the observation as context (loss mask 0); False when it does not fit."""
        it = iter(shown)
        content = [{"type": "image", "image": next(it)} if p["type"] == "image" else dict(p) for p in parts]
        # The chat template closes an assistant turn with its end token; generation stopped before it.
        if self.im_end_id is not None and (not traj.ids or traj.ids[-1] != self.im_end_id):
            traj.ids = traj.ids + [self.im_end_id]
            traj.mask = traj.mask + [0]
            if traj.logprobs is not None:
                traj.logprobs = traj.logprobs + [0.0]
        traj.messages.append({"role": "assistant", "content": text})
        previous = list(traj.messages)
        traj.messages.append({"role": "user", "content": content})
        merge, new_mask, new_logprobs = await self.ct_merge_context_msg(
            previous, traj.messages, traj.ids, traj.mask, traj.logprobs, tools=None
        )
        if len(new_mask) >= self.response_length:
            return False
        traj.ids, traj.mask = merge.token_ids, new_mask
        if traj.logprobs is not None:
            traj.logprobs = new_logprobs
        traj.images.extend(shown)
        traj.n_observations += 1
        return True

    def _output(
        self, traj: _Trajectory, rule: TurnRule, spec: RolloutSpec, end_reason: str
    ) -> AgentLoopOutput:
        L = self.response_length
        n_response = len(traj.mask)
        response_ids = traj.ids[len(traj.ids) - n_response :]
        prompt_ids = traj.ids[: len(traj.ids) - n_response]
        traj.extra_fields[ROLLOUT_RECORD_KEY] = {
            "turns": traj.turns,
            "n_valid_calls": rule.n_valid_calls,
            "n_invalid_calls": rule.n_invalid_calls,
            "end_reason": end_reason,
            "num_candidates": spec.num_candidates,
            "truncated": n_response > L,
        }
        traj.extra_fields.update({"turn_scores": [], "tool_rewards": []})
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[:L],
            response_mask=traj.mask[:L],
            response_logprobs=traj.logprobs[:L] if traj.logprobs else None,
            multi_modal_data={"images": traj.images} if traj.images else {},
            num_turns=1
            + len(traj.turns)
            + traj.n_observations,  # the prompt, the model's turns, the observations
            metrics=traj.timing,
            extra_fields=traj.extra_fields,
        )

    async def _call_tool(
        self,
        call: ToolCall,
        table: Any,
        tools: dict[str, Any],
        tools_kwargs: dict[str, Any],
        allowed: list[str],
        tool_config: ToolConfig,
    ) -> ToolResult:
        resolved = resolve_call(call, tool_config, allowed)
        if isinstance(resolved, ToolResult):
            # Unparsable or unknown: the same error texts the evaluation harness shows.
            return resolved
        name, arguments = resolved
        tool = tools[name]
        create_kwargs = (tools_kwargs.get(name) or {}).get("create_kwargs") or {}
        instance_id, _ = await tool.create(create_kwargs=create_kwargs)
        try:
            response, _, info = await tool.execute(
                instance_id, arguments, images=table, tool_config=tool_config
            )
        except Exception as e:  # a tool must never take the rollout down
            logger.warning("tool %s failed: %r", name, e)
            return ToolResult(tool=name, valid=False, error=f"the tool failed: {type(e).__name__}")
        finally:
            await tool.release(instance_id)
        if not isinstance(info, dict) or "valid" not in info:
            raise TypeError(f"{AGENT_NAME}: tool {name!r} is not a vretrver tool (no 'valid' in its metrics)")
        return ToolResult(
            tool=name,
            valid=bool(info["valid"]),
            images=list(response.image or []),
            indices=list(info.get("indices") or []),
            error=info.get("error"),
        )
