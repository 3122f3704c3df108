"""First-stage search: faiss against plain numpy exact search, and memory per candidate of each index kind.

    python bench/first_stage.py                      # 200k x 384 random unit vectors, 1000 queries, top-50
    python bench/first_stage.py --n 20000 --queries 200   # a quick run

Both exact searches run in this one process on the same data and the same threads, so the ratio is fair.
Random vectors have no cluster structure: the worst case for IVF-PQ recall; real embeddings do better.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vretrver.retrieval.index import CandidateIndex, bytes_per_candidate, default_nlist, default_pq_m  # noqa: E402


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 50_000):  # in blocks, to keep the float64 temporaries small
        block = rng.standard_normal((min(50_000, n - s), d), dtype=np.float32)
        x[s : s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def numpy_search(x: np.ndarray, q: np.ndarray, k: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with a matrix product and argpartition, in query batches."""
    scores = np.empty((len(q), k), np.float32)
    ids = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), batch):
        sim = q[s : s + batch] @ x.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-top, axis=1)
        ids[s : s + batch] = np.take_along_axis(part, order, axis=1)
        scores[s : s + batch] = np.take_along_axis(top, order, axis=1)
    return scores, ids


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def recall(ids: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, ref)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="candidates")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each exact search (best kept)")
    ap.add_argument("--nprobe", type=int, default=32)
    args = ap.parse_args()

    import faiss

    x = unit_rows(args.n, args.dim, 0)
    q = unit_rows(args.queries, args.dim, 1)
    print(
        f"{args.n} candidates x {args.dim} dims, {args.queries} queries, top-{args.k}; "
        f"faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs"
    )

    t_np, (s_np, i_np) = timed(lambda: numpy_search(x, q, args.k), args.repeats)
    rows = [("numpy exact", 0.0, t_np, 1.0, 4.0 * args.dim, 4.0 * args.dim)]
    for kind in ("flat", "fp16", "ivfpq"):
        t0 = time.perf_counter()
        index = CandidateIndex(x, kind=kind, nprobe=args.nprobe)
        build = time.perf_counter() - t0
        t_s, (s_f, i_f) = timed(
            lambda index=index: index.search(q, args.k), args.repeats if kind != "ivfpq" else 1
        )
        if kind == "flat":
            same = float(np.mean(i_f == i_np))
            max_diff = float(np.abs(s_f - s_np).max())
        rows.append(
            (
                f"faiss {kind}",
                build,
                t_s,
                recall(i_f, i_np),
                bytes_per_candidate(kind, args.dim, n=args.n, nlist=None),
                index.bytes_per_candidate,
            )
        )
        del index

    print()
    print(
        f"{'search':<14} {'build s':>8} {'search s':>9} {'queries/s':>10} {'vs numpy':>9} {'recall@k':>9} "
        f"{'B/cand':>8} {'B/cand measured':>16}"
    )
    for name, build, t, rec, b_est, b_meas in rows:
        print(
            f"{name:<14} {build:>8.2f} {t:>9.3f} {args.queries / t:>10.0f} {t_np / t:>8.2f}x {rec:>9.3f} "
            f"{b_est:>8.1f} {b_meas:>16.1f}"
        )
    print()
    print(f"faiss flat vs numpy: {same:.4%} of result ids identical, max score difference {max_diff:.2e}")
    print(
        f"ivfpq: nlist {default_nlist(args.n)}, {default_pq_m(args.dim)} bytes of code per candidate, "
        f"nprobe {args.nprobe}; B/cand counts codes + ids + centroids and codebooks spread over the pool"
    )


if __name__ == "__main__":
    main()
