"""One call to create any engine by name (heavy libraries are imported only for the engine chosen)."""

from __future__ import annotations

import os
from typing import Any

from vretrver.engines.base import Engine

# The engines a checkpoint reranks with; the oracle is a rule-based teacher for synthetic data only.
RERANK_ENGINES = ("hf", "vllm", "openai")
ENGINE_KINDS = (*RERANK_ENGINES, "oracle")


def make_engine(kind: str, model: str, **kw: Any) -> Engine:
    """Create an engine.

    * ``"hf"``: :class:`~vretrver.engines.hf.HFEngine` (transformers); ``model`` is a checkpoint folder or id.
    * ``"vllm"``: :class:`~vretrver.engines.vllm_engine.VLLMEngine` (vLLM offline); ``model`` as above.
    * ``"openai"``: :class:`~vretrver.engines.openai_engine.OpenAIEngine`; ``model`` is the served model
      name and ``base_url`` (keyword, or ``$OPENAI_BASE_URL``) the server, e.g. ``http://host:8000/v1``.
    * ``"oracle"``: :class:`~vretrver.engines.oracle.OracleEngine`, a rule-based teacher writing synthetic
      trajectories from the ground truth (``samples=`` keyword); ``model`` is the student checkpoint whose
      crop convention it follows, or any name.

    Other keywords go to the engine's constructor.
    """
    k = kind.lower()
    if k in ("hf", "transformers"):
        from vretrver.engines.hf import HFEngine

        return HFEngine(model, **kw)
    if k == "vllm":
        from vretrver.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **kw)
    if k == "openai":
        from vretrver.engines.openai_engine import OpenAIEngine

        base_url = kw.pop("base_url", None) or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError(
                "make_engine('openai', ...): needs base_url= (or $OPENAI_BASE_URL), e.g. http://localhost:8000/v1"
            )
        return OpenAIEngine(base_url, model, **kw)
    if k == "oracle":
        from vretrver.engines.oracle import OracleEngine

        return OracleEngine(model, **kw)
    raise ValueError(f"unknown engine kind {kind!r}: expected one of {', '.join(ENGINE_KINDS)}")
