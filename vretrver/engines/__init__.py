"""Inference engines behind one interface (see :mod:`vretrver.engines.base`).

The implementations import their heavy libraries lazily: ``make_engine`` picks one by name.
"""

from vretrver.engines.base import Completion, Engine, EngineError, GenerationConfig, cut_at_stop, retry
from vretrver.engines.factory import ENGINE_KINDS, RERANK_ENGINES, make_engine

__all__ = [
    "ENGINE_KINDS",
    "RERANK_ENGINES",
    "Completion",
    "Engine",
    "EngineError",
    "GenerationConfig",
    "cut_at_stop",
    "make_engine",
    "retry",
]
