"""Inner-product search over candidate embeddings with faiss, per candidate modality.

Index kinds:

* ``flat``  exact inner product (``IndexFlatIP``), 4 bytes per dimension. The default.
* ``fp16``  scalar quantizer with 16-bit floats, 2 bytes per dimension, near-exact scores.
* ``ivfpq`` inverted lists + product quantization (``IVF<nlist>,PQ<m>``) trained on a random sample:
  ``m`` bytes of code + 8 bytes of id per candidate; approximate, for pools that do not fit otherwise.

Candidates are split into one sub-index per modality ("image", "text", "image,text"). A query that must
return one modality (M-BEIR's ``candidate_modality``) searches only that sub-index; a query without
that restriction searches all and the lists are merged. The groups partition the pool, so this costs no
extra memory, and it works the same for every index kind (faiss ID selectors do not).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "fp16", "ivfpq")
MIN_IVFPQ_POINTS = 1024  # below this a group keeps an exact index: k-means / PQ training needs data


def default_pq_m(dim: int) -> int:
    """Largest number of sub-quantizers dividing ``dim``, at most 64 and at most dim / 4 (64 bytes of code
    for the usual embedding sizes: 384, 768, 3584, 4096)."""
    return max(m for m in range(1, max(1, min(64, dim // 4)) + 1) if dim % m == 0)


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) inverted lists, with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def bytes_per_candidate(
    kind: str, dim: int, n: int | None = None, pq_m: int | None = None, nlist: int | None = None
) -> float:
    """Memory per candidate of an index kind; for ``ivfpq`` the shared centroids and codebooks are
    spread over ``n`` candidates when ``n`` is given."""
    if kind == "flat":
        return 4.0 * dim
    if kind == "fp16":
        return 2.0 * dim
    if kind == "ivfpq":
        m = pq_m or default_pq_m(dim)
        per = m + 8.0  # one byte per sub-quantizer code + an int64 id in the inverted list
        if n:
            lists = nlist or default_nlist(n)
            per += (lists * dim * 4 + 256 * dim * 4) / n
        return per
    raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")


def _rows(vectors: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors[idx], dtype=np.float32)


def build_faiss_index(
    vectors: np.ndarray,
    rows: np.ndarray,
    kind: str = "flat",
    *,
    pq_m: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int = 50_000,
    add_batch: int = 65_536,
    seed: int = 0,
) -> Any:
    """A faiss inner-product index over ``vectors[rows]`` (``vectors`` may be memory-mapped)."""
    import faiss

    dim = vectors.shape[1]
    n = len(rows)
    if kind == "ivfpq" and n < MIN_IVFPQ_POINTS:
        log.info("ivfpq: group of %d candidates is too small to train; using an exact index for it", n)
        kind = "flat"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "fp16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivfpq":
        m = pq_m or default_pq_m(dim)
        if dim % m:
            raise ValueError(f"ivfpq: pq_m={m} must divide the embedding dimension {dim}")
        lists = nlist or default_nlist(n)
        index = faiss.index_factory(dim, f"IVF{lists},PQ{m}", faiss.METRIC_INNER_PRODUCT)
        # The factory turns on polysemous training (a slow annealing of code order), useful only for
        # Hamming-distance filtering, which inner-product search does not use.
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.do_polysemous_training = False
        # 64 training points per PQ centroid (faiss default: 256) keeps training minutes shorter at large
        # dims (one k-means per sub-quantizer) for a small loss of code quality.
        ivf.pq.cp.max_points_per_centroid = 64
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, max(train_size, 39 * lists)), replace=False))
        index.train(_rows(vectors, rows[sample]))
        ivf.nprobe = nprobe or min(lists, 32)
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    for s in range(0, n, add_batch):
        index.add(_rows(vectors, rows[s : s + add_batch]))
    return index


class CandidateIndex:
    """Top-k inner-product search over candidate vectors, optionally restricted to one modality.

    ``vectors``: (N, d) float32, L2-normalised rows (a memory map is fine: it is copied into faiss in
    batches). ``modalities``: per-row group label (e.g. ``Candidate.modality``); None puts all rows in one
    group. Results are row numbers into ``vectors``, -1 where fewer than k candidates qualify.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        modalities: Sequence[str] | None = None,
        kind: str = "flat",
        **options: Any,
    ):
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a 2-d matrix, got shape {vectors.shape}")
        self.kind = kind
        self.dim = int(vectors.shape[1])
        self.ntotal = int(vectors.shape[0])
        labels = np.asarray(
            ["" for _ in range(self.ntotal)] if modalities is None else list(modalities), dtype=object
        )
        if len(labels) != self.ntotal:
            raise ValueError(f"{len(labels)} modality labels for {self.ntotal} vectors")
        self.groups: dict[str, tuple[Any, np.ndarray]] = {}
        for g in dict.fromkeys(labels.tolist()):
            rows = np.flatnonzero(labels == g).astype(np.int64)
            self.groups[g] = (build_faiss_index(vectors, rows, kind, **options), rows)
        self._options = options

    @property
    def bytes_per_candidate(self) -> float:
        """Measured: the serialized size of all sub-indexes divided by the number of candidates."""
        import faiss

        if not self.ntotal:
            return 0.0
        total = sum(len(faiss.serialize_index(ix)) for ix, _ in self.groups.values())
        return total / self.ntotal

    def search(
        self, queries: np.ndarray, k: int, modality: Sequence[str | None] | str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row numbers, shape (Q, k), best first.

        ``modality``: one label for all queries, or one per query (None = any candidate).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = q.shape[0]
        scores = np.full((nq, k), -np.inf, np.float32)
        ids = np.full((nq, k), -1, np.int64)
        if nq == 0 or k <= 0:
            return scores, ids
        per_query = [modality] * nq if modality is None or isinstance(modality, str) else list(modality)
        if len(per_query) != nq:
            raise ValueError(f"{len(per_query)} modality filters for {nq} queries")
        by_filter: dict[str | None, list[int]] = {}
        for i, m in enumerate(per_query):
            by_filter.setdefault(m, []).append(i)
        for m, qrows in by_filter.items():
            if m is None:
                targets = list(self.groups.values())
            elif m in self.groups:
                targets = [self.groups[m]]
            else:
                continue  # no candidate of that modality: nothing qualifies
            sub = q[qrows]
            parts_d, parts_i = [], []
            for index, rows in targets:
                kk = min(k, len(rows))
                if kk == 0:
                    continue
                d, i = index.search(sub, kk)
                valid = i >= 0
                parts_d.append(np.where(valid, d, -np.inf).astype(np.float32))
                parts_i.append(np.where(valid, rows[np.clip(i, 0, None)], -1))
            if not parts_d:
                continue
            d_all, i_all = np.concatenate(parts_d, axis=1), np.concatenate(parts_i, axis=1)
            if len(parts_d) > 1:
                order = np.argsort(-d_all, axis=1, kind="stable")[:, :k]
                d_all = np.take_along_axis(d_all, order, axis=1)
                i_all = np.take_along_axis(i_all, order, axis=1)
            w = d_all.shape[1]
            scores[qrows, :w] = d_all[:, :k]
            ids[qrows, :w] = i_all[:, :k]
        return scores, ids


def exact_topk(
    vectors: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of one query over ``vectors[rows]`` (a small gallery): scores and row numbers, best
    first; ties keep the order of ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0 or k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    s = _rows(vectors, rows) @ np.asarray(query, dtype=np.float32)
    order = np.argsort(-s, kind="stable")[:k]
    return s[order].astype(np.float32), rows[order]
