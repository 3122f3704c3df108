"""Embeddings computed chunk by chunk, cached on disk, resumable.

Layout: ``<cache_dir>/<embedder name>/<kind>-<key>/`` where ``key`` hashes the ordered item ids and
their content (text, image paths, instruction). While a run is in progress the folder holds
``chunk_000000.npy``, ``chunk_000001.npy``, ... each written atomically (temporary file + rename), so an
interrupted run resumes from the last finished chunk. When every chunk exists they are joined into
``embeddings.npy`` (also atomically), ``meta.json`` is marked complete, the chunks are removed, and
the matrix is returned memory-mapped (a 5.6 M x 3584 float32 pool is 80 GB: it is read, not loaded).

Image files are identified by their path, not their bytes: replacing an image in place keeps the old
embedding. Delete the folder (or use another ``cache_dir``) after changing images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vretrver.retrieval.base import Embedder, Kind, check_embeddings, embed_items, item_fingerprint
from vretrver.samples import Candidate, Sample, atomic_write_text

Item = Sample | Candidate
# Embeds a list of (chunk index, items) and yields (chunk index, matrix) in any order.
ChunkRunner = Callable[[list[tuple[int, list[Item]]]], Iterable[tuple[int, np.ndarray]]]

MATRIX_FILE = "embeddings.npy"
META_FILE = "meta.json"


def content_key(items: Sequence[Item], kind: Kind) -> str:
    """Hash of the ordered ids and contents of ``items`` (stable across runs and machines)."""
    h = hashlib.sha256(f"vretrver-embeddings-v1\n{kind}\n".encode())
    for it in items:
        h.update(item_fingerprint(it).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def cache_folder(cache_dir: str | os.PathLike, embedder_name: str, items: Sequence[Item], kind: Kind) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", embedder_name).strip("._") or "embedder"
    return Path(cache_dir) / safe / f"{kind}-{content_key(items, kind)}"


def serial_runner(embedder: Embedder, kind: Kind, batch_size: int) -> ChunkRunner:
    def run(chunks: list[tuple[int, list[Item]]]) -> Iterator[tuple[int, np.ndarray]]:
        for idx, items in chunks:
            yield idx, embed_items(embedder, items, kind, batch_size)

    return run


def embed_cached(
    embedder: Embedder,
    items: Sequence[Item],
    kind: Kind,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    chunk_size: int = 2048,
    desc: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``items`` with ``embedder`` in the calling process, through the on-disk cache if given."""
    return run_chunks(
        items,
        kind,
        name=embedder.name,
        dim=embedder.dim,
        runner=serial_runner(embedder, kind, batch_size),
        cache_dir=cache_dir,
        chunk_size=chunk_size,
        desc=desc,
        progress=progress,
    )


def run_chunks(
    items: Sequence[Item],
    kind: Kind,
    *,
    name: str,
    dim: int,
    runner: ChunkRunner,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 2048,
    desc: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Cut ``items`` into chunks, have ``runner`` embed the missing ones, and return the full matrix.

    With ``cache_dir`` every finished chunk is saved at once and the result is memory-mapped; without it
    the matrix is built in memory. Rows follow the order of ``items`` whatever order chunks finish in.
    """
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = len(items)
    label = desc or f"embed {kind}s"
    if n == 0:
        return np.zeros((0, dim), np.float32)
    if cache_dir is None:
        return _run_in_memory(items, kind, name, dim, runner, chunk_size, label, progress)

    folder = cache_folder(cache_dir, name, items, kind)
    meta = _read_meta(folder)
    if meta.get("complete") and (folder / MATRIX_FILE).exists():
        mat = np.load(folder / MATRIX_FILE, mmap_mode="r")
        if mat.shape == (n, dim):
            return mat
    folder.mkdir(parents=True, exist_ok=True)
    # A resumed run keeps the chunk size it started with, so finished chunk files stay valid.
    if meta.get("chunk_size"):
        chunk_size = int(meta["chunk_size"])
    meta = {
        "embedder": name,
        "kind": kind,
        "count": n,
        "dim": dim,
        "chunk_size": chunk_size,
        "complete": False,
    }
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1))

    bounds = [(i, s, min(s + chunk_size, n)) for i, s in enumerate(range(0, n, chunk_size))]
    todo = [(i, s, e) for i, s, e in bounds if not _chunk_ok(folder / _chunk_name(i), e - s, dim)]
    done_rows = n - sum(e - s for _, s, e in todo)
    with tqdm(total=n, initial=done_rows, desc=label, unit=kind, disable=not progress) as bar:
        for idx, mat in runner([(i, list(items[s:e])) for i, s, e in todo]):
            _, s, e = bounds[idx]
            _save_atomic(folder / _chunk_name(idx), check_embeddings(mat, e - s, dim, name))
            bar.update(e - s)

    _join_chunks(folder, bounds, n, dim)
    meta.update(complete=True, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1))
    for i, _, _ in bounds:
        (folder / _chunk_name(i)).unlink(missing_ok=True)
    return np.load(folder / MATRIX_FILE, mmap_mode="r")


def _run_in_memory(
    items: Sequence[Item],
    kind: Kind,
    name: str,
    dim: int,
    runner: ChunkRunner,
    chunk_size: int,
    label: str,
    progress: bool,
) -> np.ndarray:
    """:func:`run_chunks` without a cache: the chunks' rows go straight into one matrix in memory."""
    from tqdm.auto import tqdm

    n = len(items)
    out = np.zeros((n, dim), np.float32)
    plan = [(i, list(items[s : s + chunk_size])) for i, s in enumerate(range(0, n, chunk_size))]
    with tqdm(total=n, desc=label, unit=kind, disable=not progress) as bar:
        for idx, mat in runner(plan):
            start = idx * chunk_size
            out[start : start + len(plan[idx][1])] = check_embeddings(mat, len(plan[idx][1]), dim, name)
            bar.update(len(plan[idx][1]))
    return out


def _join_chunks(folder: Path, bounds: list[tuple[int, int, int]], n: int, dim: int) -> None:
    """Join the chunk files into one matrix file, written under a temporary name and renamed."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MATRIX_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        full = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for i, s, e in bounds:
            full[s:e] = np.load(folder / _chunk_name(i))
        full.flush()
        del full
        os.replace(tmp, folder / MATRIX_FILE)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _chunk_name(i: int) -> str:
    return f"chunk_{i:06d}.npy"


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _chunk_ok(path: Path, rows: int, dim: int) -> bool:
    if not path.exists():
        return False
    try:
        return np.load(path, mmap_mode="r").shape == (rows, dim)
    except (OSError, ValueError):
        return False  # a damaged file is recomputed


def _save_atomic(path: Path, mat: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(mat, dtype=np.float32))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
