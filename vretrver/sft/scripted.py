"""A scripted engine: replays prepared assistant turns through the real episode machinery.

It stands in for a model wherever the model is not the point: tests of synthesis, filtering and export,
and dry runs of a data pipeline before a teacher server is up. The script decides each turn from the
conversation so far and the generation settings (``gen.seed`` tells attempts apart).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from vretrver.engines.base import Completion, GenerationConfig
from vretrver.protocol import Conversation
from vretrver.tools import ToolConfig

Script = Callable[[Conversation, GenerationConfig], "str | None"]


def first_user_text(conv: Conversation) -> str:
    for m in conv.messages:
        if m["role"] == "user":
            c = m["content"]
            return (
                c if isinstance(c, str) else "".join(p.get("text", "") for p in c if p.get("type") == "text")
            )
    return ""


def n_assistant_turns(conv: Conversation) -> int:
    return sum(1 for m in conv.messages if m["role"] == "assistant")


class ScriptedEngine:
    """An :class:`~vretrver.engines.base.Engine` whose turns come from ``script(conversation, gen)``.

    A script returning None makes that conversation fail like an engine error.
    """

    name = "scripted"

    def __init__(self, script: Script, tool_config: ToolConfig | None = None):
        self.script = script
        self.tool_config = tool_config or ToolConfig()
        self.calls = 0  # engine calls made (one per round of live episodes)

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        self.calls += 1
        out = []
        for conv in conversations:
            text = self.script(conv, gen)
            out.append(
                Completion(text) if text is not None else Completion(None, error="the script has no turn")
            )
        return out

    def close(self) -> None:
        pass


def script_from_table(
    table: Mapping[str, Sequence[Sequence[str]]], attempt_of: Callable[[GenerationConfig], int] | None = None
) -> Script:
    """A script from ``{marker: [trajectory of attempt 0, trajectory of attempt 1, ...]}``.

    The trajectory whose ``marker`` occurs in the first user message is replayed turn by turn; the
    attempt is ``gen.seed`` (or ``attempt_of(gen)``), wrapping around the list.
    """

    def script(conv: Conversation, gen: GenerationConfig) -> str | None:
        text = first_user_text(conv)
        for marker, trajectories in table.items():
            if marker in text:
                a = attempt_of(gen) if attempt_of else (gen.seed or 0)
                turns = trajectories[a % len(trajectories)]
                n = n_assistant_turns(conv)
                return turns[n] if n < len(turns) else None
        return None

    return script
