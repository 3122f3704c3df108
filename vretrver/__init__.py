"""vretrver: V-Retrver, evidence-driven agentic reranking for universal multimodal retrieval.

The library behind every stage: the reranking protocol (prompt profiles, parser), the visual tools,
episodes, inference engines, first-stage retrieval, benchmarks, metrics and reports, and the glue for
LLaMA-Factory (SFT / RFT) and verl (RL). Heavy libraries are imported only where they are used.
"""

__version__ = "0.1.0"
