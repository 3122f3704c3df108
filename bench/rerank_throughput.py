"""Reranking throughput: episodes one by one vs all live episodes in one engine call per round.

    python bench/rerank_throughput.py                    # transformers and vLLM (if .venv-vllm exists)
    python bench/rerank_throughput.py --engines hf --n 16

32 episodes (K = 5 candidates, images from the Tux Paint stamps, or scikit-image's photos when those are
not installed) on the tiny random Qwen2.5-VL. For each engine the same episodes run twice in the same
process: one conversation per engine call (``batch_size=1``), then one call per round for all live
episodes (``batch_size=None``). The printed ratio is one-by-one time / concurrent time.

The transformers part runs in this interpreter; the vLLM part runs in the vLLM environment (given by
``--vllm-python``, default ``.venv-vllm/bin/python``), as a subprocess of this script, or directly when
this script is started with that interpreter. A random model never answers, so every episode is one
turn of ``--max-new-tokens`` tokens: the numbers measure the engines, not the reranker.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vretrver.samples import Candidate, Query, Sample, read_samples, write_samples  # noqa: E402


def _image_pool() -> list[tuple[str, str]]:
    """(image path, caption) pairs: Tux Paint stamps if installed, else scikit-image's sample photos."""
    try:
        from vretrver.benchmarks.tuxpaint import read_pairs

        pairs, _ = read_pairs()
        return [(p.image, p.caption) for p in pairs]
    except Exception:
        import importlib.util

        spec = importlib.util.find_spec("skimage")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                "needs Tux Paint stamps (tuxpaint-stamps-default) or scikit-image for images"
            ) from None
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        files = [
            "astronaut.png",
            "coffee.png",
            "chelsea.png",
            "rocket.jpg",
            "motorcycle_left.png",
            "camera.png",
        ]
        return [(str(data / f), f.split(".")[0].replace("_", " ")) for f in files if (data / f).is_file()]


def make_samples(n: int, k: int, seed: int = 0) -> list[Sample]:
    pool = _image_pool()
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        q_img, q_cap = pool[rng.randrange(len(pool))]
        cands = [pool[rng.randrange(len(pool))] for _ in range(k)]
        samples.append(
            Sample(
                id=f"bench-{i}",
                query=Query(text=q_cap, images=[q_img]),
                candidates=[
                    Candidate(id=f"bench-{i}-{j}", text=c, image=p) for j, (p, c) in enumerate(cands)
                ],
            )
        )
    return samples


def measure(engine, samples: list[Sample], max_new_tokens: int) -> dict[str, float]:
    from vretrver.engines.base import GenerationConfig
    from vretrver.rerank import run_episodes

    # Greedy, with the profile's stop strings; the random model nearly always runs to the token limit.
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    run_episodes(samples[:2], engine, gen=gen)  # warm-up: first-call costs are not throughput
    t0 = time.perf_counter()
    seq = run_episodes(samples, engine, gen=gen, batch_size=1)
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    conc = run_episodes(samples, engine, gen=gen)
    t_conc = time.perf_counter() - t0
    failed = sum(e.failed is not None for e in seq + conc)
    turns = sum(len([t for t in e.turns if t.role == "assistant"]) for e in conc)
    return {
        "one_by_one_s": t_seq,
        "concurrent_s": t_conc,
        "ratio": t_seq / t_conc,
        "failed": failed,
        "turns": turns,
    }


def run_hf(model: str, samples: list[Sample], max_new_tokens: int, device: str) -> dict[str, float]:
    from vretrver.engines.hf import HFEngine

    engine = HFEngine(model, device=device, batch_size=len(samples))
    try:
        return measure(engine, samples, max_new_tokens)
    finally:
        engine.close()


def run_vllm(model: str, samples: list[Sample], max_new_tokens: int) -> dict[str, float]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vretrver.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        model,
        max_model_len=4096,
        enforce_eager=True,
        max_num_seqs=len(samples),
        limit_mm_per_prompt={"image": 8},
        dtype="bfloat16",
    )
    try:
        return measure(engine, samples, max_new_tokens)
    finally:
        engine.close()


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the tiny random Qwen2.5-VL)")
    ap.add_argument("--n", type=int, default=32, help="episodes")
    ap.add_argument("--k", type=int, default=5, help="candidates per episode")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="transformers engine device")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--samples", default=None, help=argparse.SUPPRESS)  # jsonl handed to the vLLM subprocess
    ap.add_argument("--json-out", default=None, help="also write the results as json")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    if args.model is None:
        from vretrver.testing.tiny_models import tiny_model_path

        args.model = str(tiny_model_path("qwen2_5_vl"))
    samples = read_samples(args.samples) if args.samples else make_samples(args.n, args.k)
    results: dict[str, dict[str, float]] = {}
    for name in engines:
        print(
            f"[{name}] {len(samples)} episodes, K={args.k}, {args.max_new_tokens} new tokens ...", flush=True
        )
        if name == "hf":
            results[name] = run_hf(args.model, samples, args.max_new_tokens, args.device)
        elif name == "vllm" and _vllm_importable():
            results[name] = run_vllm(args.model, samples, args.max_new_tokens)
        elif name == "vllm":
            results[name] = _vllm_subprocess(args, samples)
        else:
            raise SystemExit(f"unknown engine {name!r}: expected hf or vllm")

    print(f"\n{'engine':<8} {'one-by-one s':>13} {'concurrent s':>13} {'ratio':>7}  episodes={len(samples)}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<8} skipped: {r['skipped']}")
            continue
        print(f"{name:<8} {r['one_by_one_s']:>13.2f} {r['concurrent_s']:>13.2f} {r['ratio']:>6.1f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


def _vllm_subprocess(args: argparse.Namespace, samples: list[Sample]) -> dict[str, float]:
    py = Path(args.vllm_python)
    if not py.is_file():
        return {"skipped": f"no vLLM environment at {py}"}
    with tempfile.TemporaryDirectory(prefix="vretrver-bench-") as tmp:
        sample_file, out_file = Path(tmp) / "samples.jsonl", Path(tmp) / "vllm.json"
        write_samples(sample_file, samples)
        cmd = [
            str(py), __file__, "--engines", "vllm", "--model", args.model, "--k", str(args.k),
            "--max-new-tokens", str(args.max_new_tokens), "--samples", str(sample_file), "--json-out", str(out_file),
        ]  # fmt: skip
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        )
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out_file.is_file():
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            raise SystemExit(f"the vLLM run failed (exit {proc.returncode})")
        return json.loads(out_file.read_text())["vllm"]


if __name__ == "__main__":  # vLLM starts worker processes
    sys.exit(main())
