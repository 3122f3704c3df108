"""The embedder interface of the first stage, its factory, and helpers shared by the embedders.

An embedder maps queries (:class:`~vretrver.samples.Sample`) and candidates
(:class:`~vretrver.samples.Candidate`) into one space: float32 rows, L2-normalised, so an inner product
is a cosine similarity. ``name`` identifies the model *and* every setting that changes its vectors; the
embedding cache is keyed by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from vretrver.samples import Candidate, Sample

Kind = Literal["query", "candidate"]

# Default checkpoints of the "lamra" spec (Qwen2-VL-7B based; a Qwen2.5-VL-7B variant exists too).
LAMRA_DEFAULT = "code-kunkun/LamRA-Ret"
LAMRA_QWEN25VL = "code-kunkun/LamRA-Ret-Qwen2.5VL-7b"


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed_queries(self, queries: list[Sample], batch_size: int = 32) -> np.ndarray: ...

    def embed_candidates(self, cands: list[Candidate], batch_size: int = 32) -> np.ndarray: ...


def make_embedder(spec: str, **kw: Any) -> Embedder:
    """Build an embedder from a spec string.

    ``offline``            MiniLM text + EfficientNet-Lite0 image embedder, CPU, no download.
    ``lamra[:MODEL]``      LamRA-style MLLM embedder (default model: ``code-kunkun/LamRA-Ret``).
    ``hash[:DIM]``         deterministic stand-in without a model (tests, dry runs; meaningless scores).

    Keyword arguments go to the embedder's constructor. The result remembers ``(spec, kw)`` in
    ``.spec`` so that workers on other machines can rebuild the same embedder.
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    emb: Any
    if kind == "offline":
        if arg:
            raise ValueError(f"embedder spec {spec!r}: 'offline' takes no argument")
        from vretrver.retrieval.offline import OfflineEmbedder

        emb = OfflineEmbedder(**kw)
    elif kind == "lamra":
        from vretrver.retrieval.lamra import LamRAEmbedder

        emb = LamRAEmbedder(arg or LAMRA_DEFAULT, **kw)
    elif kind == "hash":
        emb = HashEmbedder(dim=int(arg) if arg else 64, **kw)
    else:
        raise ValueError(
            f"unknown embedder spec {spec!r}: expected 'offline', 'lamra[:MODEL_PATH]' or 'hash[:DIM]'"
        )
    emb.spec = (spec, dict(kw))
    return emb


def embed_items(
    embedder: Embedder, items: Sequence[Sample | Candidate], kind: Kind, batch_size: int = 32
) -> np.ndarray:
    """Dispatch to ``embed_queries`` / ``embed_candidates`` and check the contract of the result."""
    if kind == "query":
        out = embedder.embed_queries(list(items), batch_size=batch_size)  # type: ignore[arg-type]
    elif kind == "candidate":
        out = embedder.embed_candidates(list(items), batch_size=batch_size)  # type: ignore[arg-type]
    else:
        raise ValueError(f"kind must be 'query' or 'candidate', got {kind!r}")
    return check_embeddings(out, len(items), embedder.dim, embedder.name)


def check_embeddings(x: Any, n: int, dim: int, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (n, dim):
        raise ValueError(f"embedder {name!r} returned shape {x.shape}, expected ({n}, {dim})")
    x = x.astype(np.float32, copy=False)
    if n:
        norms = np.linalg.norm(x, axis=1)
        if not np.all(np.isfinite(norms)) or np.abs(norms - 1).max() > 1e-3:
            bad = int(np.argmax(~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3)))
            raise ValueError(
                f"embedder {name!r}: row {bad} has norm {norms[bad]:.4g}, expected L2-normalised rows"
            )
    return x


def item_fingerprint(item: Sample | Candidate) -> str:
    """The content that determines an item's embedding (cache keys are built from it)."""
    if isinstance(item, Sample):
        q = item.query
        d = {"id": item.id, "text": q.text, "images": q.images, "instruction": q.instruction}
    else:
        d = {"id": item.id, "text": item.text, "image": item.image}
    return json.dumps(d, ensure_ascii=False, sort_keys=True)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def settings_tag(settings: dict[str, Any]) -> str:
    """A short stable hash of settings, appended to embedder names."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def load_rgb(path: str):
    """An image file as RGB, prepared as everywhere else (:func:`vretrver.images.load_image`): upright,
    transparent parts on white, capped in size; an unreadable file raises an ``OSError`` naming it."""
    from vretrver.images import load_image

    return load_image(path)


class HashEmbedder:
    """A deterministic stand-in: each text and each image path maps to a fixed random unit vector.

    A query or candidate is the normalised sum of its parts, so identical texts (or image paths) on
    both sides score highest. No model, no meaning: for tests and dry runs of the pipeline.
    """

    def __init__(self, dim: int = 64):
        if dim < 1:
            raise ValueError(f"hash embedder: dim must be >= 1, got {dim}")
        self.dim = dim
        self.name = f"hash-{dim}"

    def _vec(self, key: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def _combine(self, text: str | None, images: Sequence[str], where: str) -> np.ndarray:
        parts = ([self._vec("t:" + text)] if text else []) + [self._vec("i:" + p) for p in images]
        if not parts:
            raise ValueError(f"{where}: neither text nor image to embed")
        return l2_normalize(np.sum([l2_normalize(p) for p in parts], axis=0))

    def embed_queries(self, queries: list[Sample], batch_size: int = 32) -> np.ndarray:
        rows = [self._combine(q.query.text, q.query.images, f"query {q.id}") for q in queries]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def embed_candidates(self, cands: list[Candidate], batch_size: int = 32) -> np.ndarray:
        rows = [self._combine(c.text, [c.image] if c.image else [], f"candidate {c.id}") for c in cands]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
