"""The reranking protocol: prompt profiles, conversations, and the parser of assistant turns.

This is the one copy used by SFT data export, RL rollouts and evaluation alike.
"""

from vretrver.protocol.conversation import (
    Conversation,
    ImageLike,
    build_conversation,
    observation_message,
    system_prompt,
)
from vretrver.protocol.parser import ParsedTurn, ToolCall, normalize_ranking, parse_turn
from vretrver.protocol.profile import DEFAULT_PROFILE, Profile, ProfileError, list_profiles, load_profile

__all__ = [
    "DEFAULT_PROFILE",
    "Conversation",
    "ImageLike",
    "ParsedTurn",
    "Profile",
    "ProfileError",
    "ToolCall",
    "build_conversation",
    "list_profiles",
    "load_profile",
    "normalize_ranking",
    "observation_message",
    "parse_turn",
    "system_prompt",
]
