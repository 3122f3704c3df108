"""Peak memory of the reranking stage against the number of queries (continuous scheduling).

    python bench/memory.py                       # 1,000 and 100,000 queries
    python bench/memory.py --sizes 1000,10000

For each size, in a fresh process: a synthetic samples file (each query with a query image and its
top-``--top-n`` candidates, each with a text and one of ``--images`` small PNG files) is written line by
line; then the reranking stage reads it lazily (``iter_samples``), reranks it with continuous
scheduling through :class:`vretrver.sft.scripted.ScriptedEngine` (every window answered, one window in
``--tool-every`` looking at two candidates with ``select_images`` first) and appends each finished
query's result and trajectories (tool images as PNG files) exactly as ``vretrver eval`` does. The peak
resident set size of that process is reported (``ru_maxrss``), and the ratio between the largest and
the smallest size (goal: within 10 %).

``--scheduler rounds`` measures the round-synchronous path for comparison, as ``vretrver eval --scheduler
rounds`` runs it: every query read first, then chunks of ``--chunk-queries`` reranked and saved in turn.

What this leaves out, and grows with the number of queries in ``vretrver eval``: the benchmark reader
and the first stage hold every query and its list in memory, and the rankings are kept for scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_samples(path: Path, n: int, top_n: int, images: list[str]) -> None:
    """``n`` synthetic queries, written one line at a time (the file, not memory, holds them)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {
                "id": f"q{i}",
                "query": {"text": f"query number {i}", "images": [images[i % len(images)]]},
                "candidates": [
                    {
                        "id": f"q{i}-c{j}",
                        "text": f"candidate {j} of {i}",
                        "image": images[(i * 7 + j) % len(images)],
                    }
                    for j in range(top_n)
                ],
            }
            f.write(json.dumps(row) + "\n")


def script_for(tool_every: int):
    from vretrver.sft.scripted import first_user_text, n_assistant_turns

    def script(conv, gen) -> str:
        text = first_user_text(conv)
        k = text.count("\n(")
        if n_assistant_turns(conv) == 0 and zlib.crc32(text.encode()) % tool_every == 0:
            return '<think>look</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1, 2]}}</tool_call>'
        return f"<think>done</think><answer>{list(range(k, 0, -1))}</answer>"

    return script


def run_one(args: argparse.Namespace) -> dict:
    """One size, in this process: write the samples, rerank them, report the peak RSS."""
    from PIL import Image

    from vretrver.evaluate import append_lines, query_rows
    from vretrver.rerank import RerankConfig
    from vretrver.samples import iter_samples
    from vretrver.scheduler import rerank_continuous
    from vretrver.sft.scripted import ScriptedEngine

    work = Path(args.work)
    img_dir = work / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for j in range(args.images):
        p = img_dir / f"im{j}.png"
        Image.new("RGB", (64 + j % 7, 48), (j * 3 % 256, 90, 200 - j % 100)).save(p)
        images.append(str(p))
    samples = work / "samples.jsonl"
    write_samples(samples, args.size, args.top_n, images)
    out = work / "out"
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "trajectories").mkdir(parents=True, exist_ok=True)
    res_path, traj_path = out / "results" / "bench.jsonl", out / "trajectories" / "bench.jsonl"
    tool_dir = out / "trajectories" / "img"
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_done = 0

    def save(done) -> None:
        nonlocal n_done
        rows = [query_rows(s, r, tool_dir) for s, r in done]
        append_lines(traj_path, [t for _, trajs in rows for t in trajs])
        append_lines(res_path, [r for r, _ in rows])
        n_done += len(rows)

    cfg = RerankConfig(top_n=args.top_n, window=20, stride=10, max_inflight=args.inflight)
    engine = ScriptedEngine(script_for(args.tool_every))
    t0 = time.perf_counter()
    if args.scheduler == "continuous":
        stats = rerank_continuous(iter_samples(samples), engine, cfg, save)
        episodes, turns = stats.episodes, stats.turns
    else:
        from vretrver.rerank import rerank_windows

        todo = list(iter_samples(samples))
        episodes = turns = 0
        for i in range(0, len(todo), args.chunk_queries):
            chunk = todo[i : i + args.chunk_queries]
            results = rerank_windows(chunk, engine, cfg)
            episodes += sum(len(r.episodes) for r in results)
            turns += sum(1 for r in results for e in r.episodes for t in e.turns if t.role == "assistant")
            save(list(zip(chunk, results)))
    return {
        "queries": n_done,
        "episodes": episodes,
        "turns": turns,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_start / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000", help="comma-separated query counts")
    ap.add_argument("--top-n", type=int, default=30, help="candidates per query (30: two windows of 20)")
    ap.add_argument("--images", type=int, default=200, help="distinct image files")
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--tool-every", type=int, default=10, help="one window in N makes a tool call")
    ap.add_argument("--scheduler", default="continuous", choices=("continuous", "rounds"))
    ap.add_argument("--chunk-queries", type=int, default=32, help="--scheduler rounds: queries per chunk")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)  # one size, in this process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size is not None:
        print(json.dumps(run_one(args)))
        return 0
    results = {}
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="vretrver-mem-") as tmp:
            cmd = [sys.executable, __file__, "--size", str(n), "--work", tmp, "--top-n", str(args.top_n),
                   "--images", str(args.images), "--inflight", str(args.inflight),
                   "--tool-every", str(args.tool_every), "--scheduler", args.scheduler,
                   "--chunk-queries", str(args.chunk_queries)]  # fmt: skip
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
            )
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"the run with {n} queries failed")
            results[n] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[n]
            print(
                f"{n:>8} queries: peak RSS {r['peak_rss_mb']:7.1f} MB (after imports {r['rss_before_mb']:.1f} MB), "
                f"{r['episodes']} episodes, {r['turns']} turns, {r['seconds']:.0f} s",
                flush=True,
            )
    peaks = [r["peak_rss_mb"] for r in results.values()]
    print(f"{args.scheduler} scheduling: largest / smallest peak RSS: {max(peaks) / min(peaks):.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
