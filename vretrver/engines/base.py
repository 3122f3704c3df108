"""The engine interface: "continue these N conversations until a stop string".

Implementations (transformers, vLLM offline, any OpenAI-compatible server) render every conversation
through the checkpoint's own chat template, so the same sample and profile give the same prompt tokens
in every engine. A completion's text INCLUDES the stop string that ended it (engines whose backend drops
it add it back), because the parser needs the closing tag.

An engine may also offer ``turn_stream(max_inflight)``: turns submitted one by one and handed back as
they finish (:class:`vretrver.scheduler.TurnStream`), which continuous scheduling uses; without it the
scheduler calls ``continue_conversations`` with whatever turns are ready.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from vretrver.protocol import Conversation
from vretrver.tools import ToolConfig

T = TypeVar("T")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 1024
    temperature: float = 0.0  # greedy by default (evaluation)
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=lambda: ["</tool_call>", "</answer>"])


@dataclass
class Completion:
    text: str | None
    error: str | None = None  # set when the engine gave up on this conversation
    finish_reason: str | None = None  # "stop" | "length" | ...
    n_prompt_tokens: int | None = None
    n_completion_tokens: int | None = None


class Engine(Protocol):
    name: str
    tool_config: ToolConfig  # resize settings and coordinate convention of the checkpoint's processor

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        """One assistant turn for each conversation, in order; failures come back as Completion.error."""
        ...

    def close(self) -> None: ...


class EngineError(RuntimeError):
    pass


def backoff_delay(backoff: float, i: int) -> float:
    """Seconds to wait before try ``i + 2``: backoff * 2**i, with up to 25% jitter."""
    return backoff * (2**i) * (1 + 0.25 * random.random())


def retry(
    fn: Callable[[], T],
    attempts: int = 3,
    backoff: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on failure wait :func:`backoff_delay` and try again, ``attempts`` times in all."""
    for i in range(attempts):
        try:
            return fn()
        except retry_on:
            if i == attempts - 1:
                raise
            sleep(backoff_delay(backoff, i))
    raise AssertionError("unreachable")


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    attempts: int = 3,
    backoff: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """:func:`retry` for coroutines: ``await fn()`` up to ``attempts`` times."""
    for i in range(attempts):
        try:
            return await fn()
        except retry_on:
            if i == attempts - 1:
                raise
            await asyncio.sleep(backoff_delay(backoff, i))
    raise AssertionError("unreachable")


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` after the first stop string (kept); say whether one was found."""
    best = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return (text[:best], True) if best is not None else (text, False)
