"""Inference engines behind one interface (see :mod:`vretrver.engines.base`).

The implementations import their heavy libraries lazily: ``make_engine`` picks one by name.
"""

from vretrver.engines.base import Completion, Engine, EngineError, GenerationConfig, cut_at_stop, retry

__all__ = ["Completion", "Engine", "EngineError", "GenerationConfig", "cut_at_stop", "retry"]
