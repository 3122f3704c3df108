"""The first stage: embedders, the embedding cache, faiss search, and precomputed candidate lists.

Heavy libraries (torch, transformers, faiss, ray) are imported inside the functions that use them.
"""

from vretrver.retrieval.base import Embedder, HashEmbedder, embed_items, make_embedder
from vretrver.retrieval.cache import embed_cached
from vretrver.retrieval.index import INDEX_KINDS, CandidateIndex, bytes_per_candidate, exact_topk
from vretrver.retrieval.precomputed import (
    PrecomputedStats,
    read_candidates,
    read_candidates_jsonl,
    read_hit_parquet,
)
from vretrver.retrieval.search import (
    RayEmbedPool,
    attach_candidates,
    embed_parallel,
    first_stage,
    write_candidates_jsonl,
)

__all__ = [
    "INDEX_KINDS",
    "CandidateIndex",
    "Embedder",
    "HashEmbedder",
    "PrecomputedStats",
    "RayEmbedPool",
    "attach_candidates",
    "bytes_per_candidate",
    "embed_cached",
    "embed_items",
    "embed_parallel",
    "exact_topk",
    "first_stage",
    "make_embedder",
    "read_candidates",
    "read_candidates_jsonl",
    "read_hit_parquet",
    "write_candidates_jsonl",
]
