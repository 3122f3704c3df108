"""Round-synchronous against continuous scheduling: wall time and engine utilisation.

    python bench/scheduling.py                      # simulated engine, 1,000 queries x 4 windows
    python bench/scheduling.py --vllm               # and the vLLM CPU engine with the tiny model

**Simulated engine** (no model; a virtual clock, so the numbers do not depend on this machine). It
stands for a continuous-batching server with ``--slots`` sequence slots:

* each decode step advances every running sequence by one token and costs
  ``--step-base + --step-per-seq * running`` seconds (a step has a fixed cost, plus a part that grows
  with the batch); requests beyond the slots wait for a free one; prefill is not modelled;
* the length of each model turn is heavy tailed: lognormal with median ``--median-tokens`` and
  ``--sigma`` (default 1.0: the slowest of 32 turns is about 7x the median), cut at
  ``--max-new-tokens``; it is a function of the conversation so far, so both drivers see the same turn
  lengths;
* each window makes 0, 1 or 2 tool calls (a function of the candidates it shows) before answering.

Both drivers run the real reranking code (episodes, windows, tools) over the same 1,000 queries of 50
text candidates (4 windows each) with the same concurrency: the round-synchronous driver with chunks of
``--concurrency`` queries, the continuous one with ``--concurrency`` episodes in flight. Utilisation is
the share of slot-seconds that held a running sequence. The ratio is round-synchronous time /
continuous time (goal: >= 1.5).

**vLLM** (``--vllm``): the same comparison with the vLLM CPU engine and the tiny random Qwen2.5-VL, run
in the vLLM environment (``--vllm-python``); Tux Paint stamps (or scikit-image photos) as images. A
random model writes every turn to the token limit, so its turns are all alike: this part shows what the
driver costs or saves on a real engine, not the tail effect.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vretrver.engines.base import Completion, GenerationConfig  # noqa: E402
from vretrver.protocol import Conversation  # noqa: E402
from vretrver.rerank import RerankConfig, rerank_windows  # noqa: E402
from vretrver.samples import Candidate, Query, Sample  # noqa: E402
from vretrver.scheduler import rerank_continuous  # noqa: E402
from vretrver.tools import ToolConfig  # noqa: E402


def _unit(*parts: object) -> float:
    """A number in (0, 1) fixed by ``parts``."""
    h = int(hashlib.sha1(repr(parts).encode()).hexdigest()[:13], 16)
    return (h + 0.5) / 16**13


class SimCore:
    """The virtual continuous-batching engine: slots, a step cost, a clock."""

    def __init__(self, slots: int, step_base: float, step_per_seq: float):
        self.slots, self.step_base, self.step_per_seq = slots, step_base, step_per_seq
        self.clock = 0.0
        self.busy = 0.0  # slot-seconds with a running sequence
        self.waiting: deque[tuple[int, int]] = deque()
        self.running: dict[int, int] = {}  # key -> tokens left

    def add(self, key: int, tokens: int) -> None:
        self.waiting.append((key, tokens))

    def step(self) -> list[int]:
        while self.waiting and len(self.running) < self.slots:
            k, t = self.waiting.popleft()
            self.running[k] = t
        n = len(self.running)
        dt = self.step_base + self.step_per_seq * n
        self.clock += dt
        self.busy += n * dt
        done = []
        for k in list(self.running):
            self.running[k] -= 1
            if self.running[k] <= 0:
                del self.running[k]
                done.append(k)
        return done

    def utilisation(self) -> float:
        return self.busy / (self.slots * self.clock) if self.clock else 0.0


class SimEngine:
    """An engine whose answers are scripted and whose time is :class:`SimCore`'s virtual clock."""

    name = "simulated"

    def __init__(self, core: SimCore, median_tokens: float, sigma: float, max_new_tokens: int):
        self.core = core
        self.tool_config = ToolConfig()
        self.median, self.sigma, self.cap = median_tokens, sigma, max_new_tokens
        self.keys = iter(range(1 << 62))
        self.turns = 0

    def answer(self, conv: Conversation) -> tuple[str, int]:
        shown = conv.messages[1]["content"]
        shown = shown if isinstance(shown, str) else "".join(p.get("text", "") for p in shown)
        n_turn = sum(1 for m in conv.messages if m["role"] == "assistant")
        calls = int(_unit(shown, "calls") * 3)  # 0, 1 or 2 tool calls in this window
        # Lognormal from two uniforms (Box-Muller), fixed by the conversation and the turn.
        z = math.sqrt(-2 * math.log(_unit(shown, n_turn, "a"))) * math.cos(
            2 * math.pi * _unit(shown, n_turn, "b")
        )
        tokens = max(1, min(self.cap, round(self.median * math.exp(self.sigma * z))))
        if n_turn < calls:
            text = '<think>look</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1]}}</tool_call>'
        else:
            k = shown.count("\n(")
            order = sorted(range(1, k + 1), key=lambda n: _unit(shown, n))
            text = f"<think>ranked</think><answer>{order}</answer>"
        return text, tokens

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        """A batch call: all requests in, the clock runs until the last one is done."""
        keys = []
        texts = {}
        for conv in conversations:
            key = next(self.keys)
            text, tokens = self.answer(conv)
            texts[key] = text
            keys.append(key)
            self.core.add(key, tokens)
        left = set(keys)
        while left:
            left.difference_update(self.core.step())
        self.turns += len(keys)
        return [Completion(texts[k]) for k in keys]

    def turn_stream(self, max_inflight: int) -> SimTurns:
        return SimTurns(self)

    def close(self) -> None:
        pass


class SimTurns:
    """Turns in one by one; the clock runs until at least one is done."""

    def __init__(self, engine: SimEngine):
        self.engine = engine
        self.texts: dict[int, tuple[int, str]] = {}

    def submit(self, key: int, conv: Conversation, gen: GenerationConfig) -> None:
        text, tokens = self.engine.answer(conv)
        inner = next(self.engine.keys)
        self.texts[inner] = (key, text)
        self.engine.core.add(inner, tokens)

    def wait(self) -> list[tuple[int, Completion]]:
        out: list[tuple[int, Completion]] = []
        while not out and self.texts:
            for inner in self.engine.core.step():
                key, text = self.texts.pop(inner)
                out.append((key, Completion(text)))
        self.engine.turns += len(out)
        return out

    def close(self) -> None:
        pass


def text_samples(n: int, k: int = 50, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [
        Sample(
            f"q{i}",
            Query(text=f"query {i}"),
            [Candidate(f"q{i}-d{j}", text=f"doc {rng.randrange(10**6)}") for j in range(k)],
        )
        for i in range(n)
    ]


def simulate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    samples = text_samples(args.queries)
    out = {}
    for driver in ("rounds", "continuous"):
        core = SimCore(args.slots or args.concurrency, args.step_base, args.step_per_seq)
        engine = SimEngine(core, args.median_tokens, args.sigma, args.max_new_tokens)
        cfg = RerankConfig(max_inflight=args.concurrency, image_cache=False)
        t0 = time.perf_counter()
        if driver == "rounds":
            rankings = {}
            for i in range(0, len(samples), args.concurrency):
                for r in rerank_windows(samples[i : i + args.concurrency], engine, cfg):
                    rankings[r.sample_id] = r.ranked_ids
        else:
            rankings = {}

            def keep(done, rankings=rankings):
                rankings.update((s.id, r.ranked_ids) for s, r in done)

            rerank_continuous(samples, engine, cfg, keep)
        out[driver] = {
            "virtual_s": core.clock,
            "utilisation": core.utilisation(),
            "turns": engine.turns,
            "cpu_s": time.perf_counter() - t0,
            "rankings": hashlib.sha1(json.dumps(rankings, sort_keys=True).encode()).hexdigest()[:12],
        }
    return out


# --------------------------------------------------------------------------- vLLM


def vllm_compare(n: int, k: int, max_new_tokens: int, inflight: int) -> dict[str, dict[str, float]]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.path.insert(0, str(ROOT / "bench"))
    from rerank_throughput import make_samples

    from vretrver.engines.vllm_engine import VLLMEngine
    from vretrver.testing.tiny_models import tiny_model_path

    samples = make_samples(n, k)
    engine = VLLMEngine(
        str(tiny_model_path("qwen2_5_vl")),
        max_model_len=8192,
        enforce_eager=True,
        max_num_seqs=inflight,
        limit_mm_per_prompt={"image": 16},
        dtype="bfloat16",
    )
    gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=["</tool_call>", "</answer>"])
    cfg = RerankConfig(top_n=k, window=8, stride=4, max_inflight=inflight, generation=gen)
    out = {}
    try:
        rerank_windows(samples[:2], engine, cfg)  # warm-up
        for driver in ("rounds", "continuous"):
            # Each driver starts cold: no prompt prefix or image cached by the other's run.
            engine.llm.reset_prefix_cache()
            engine.llm.reset_mm_cache()
            t0 = time.perf_counter()
            if driver == "rounds":
                res = [
                    r
                    for i in range(0, n, inflight)
                    for r in rerank_windows(samples[i : i + inflight], engine, cfg)
                ]
            else:
                got: dict = {}

                def keep(done, got=got):
                    got.update((s.id, r) for s, r in done)

                rerank_continuous(samples, engine, cfg, keep)
                res = [got[s.id] for s in samples]
            out[driver] = {
                "wall_s": time.perf_counter() - t0,
                "turns": [[t.text for t in e.turns] for r in res for e in r.episodes],
            }
    finally:
        engine.close()
    same = out["rounds"].pop("turns") == out["continuous"].pop("turns")
    out["same_turns"] = {"value": same}
    return out


def _vllm_subprocess(args: argparse.Namespace) -> dict:
    py = Path(args.vllm_python)
    if not py.is_file():
        return {"skipped": f"no vLLM environment at {py}"}
    with tempfile.TemporaryDirectory(prefix="vretrver-bench-") as tmp:
        out_file = Path(tmp) / "vllm.json"
        cmd = [str(py), __file__, "--vllm-only", "--vllm-queries", str(args.vllm_queries),
               "--vllm-tokens", str(args.vllm_tokens), "--vllm-inflight", str(args.vllm_inflight),
               "--json-out", str(out_file)]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out_file.is_file():
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            raise SystemExit(f"the vLLM run failed (exit {proc.returncode})")
        return json.loads(out_file.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument(
        "--concurrency", type=int, default=32, help="chunk (rounds) = episodes in flight (continuous)"
    )
    ap.add_argument("--slots", type=int, default=None, help="engine sequence slots (default: --concurrency)")
    ap.add_argument("--step-base", type=float, default=0.020, help="seconds per decode step, fixed part")
    ap.add_argument("--step-per-seq", type=float, default=0.0005, help="seconds per decode step per sequence")
    ap.add_argument("--median-tokens", type=float, default=150.0)
    ap.add_argument("--sigma", type=float, default=1.0, help="lognormal shape of the turn lengths")
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--vllm", action="store_true", help="also compare on the vLLM CPU engine (tiny model)")
    ap.add_argument("--vllm-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vllm-queries", type=int, default=12)
    ap.add_argument("--vllm-tokens", type=int, default=16, help="max new tokens per turn (vLLM part)")
    ap.add_argument("--vllm-inflight", type=int, default=4)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    if args.vllm_only:
        res = vllm_compare(args.vllm_queries, 12, args.vllm_tokens, args.vllm_inflight)
        Path(args.json_out).write_text(json.dumps(res))
        return 0
    results: dict = {}
    sim = simulate(args)
    results["simulated"] = sim
    r, c = sim["rounds"], sim["continuous"]
    print(
        f"simulated engine: {args.queries} queries x 4 windows, concurrency {args.concurrency}, "
        f"turn tokens lognormal(median {args.median_tokens:g}, sigma {args.sigma:g}) <= {args.max_new_tokens}, "
        f"step {args.step_base * 1000:g} ms + {args.step_per_seq * 1000:g} ms/seq"
    )
    print(f"{'driver':<12} {'wall (virtual) s':>17} {'utilisation':>12} {'turns':>7} {'driver cpu s':>13}")
    for name, x in sim.items():
        print(
            f"{name:<12} {x['virtual_s']:>17.1f} {x['utilisation']:>11.1%} {x['turns']:>7} {x['cpu_s']:>13.1f}"
        )
    same = "same rankings" if r["rankings"] == c["rankings"] else "RANKINGS DIFFER"
    print(f"ratio rounds / continuous: {r['virtual_s'] / c['virtual_s']:.2f}x ({same})")
    if args.vllm:
        v = _vllm_subprocess(args)
        results["vllm"] = v
        if "skipped" in v:
            print(f"vLLM: skipped: {v['skipped']}")
        else:
            print(
                f"vLLM CPU, tiny Qwen2.5-VL, {args.vllm_queries} queries x 2 windows, {args.vllm_inflight} in flight, "
                f"{args.vllm_tokens} new tokens: rounds {v['rounds']['wall_s']:.1f} s, continuous "
                f"{v['continuous']['wall_s']:.1f} s, ratio {v['rounds']['wall_s'] / v['continuous']['wall_s']:.2f}x "
                f"({'same turns' if v['same_turns']['value'] else 'TURNS DIFFER'})"
            )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":  # vLLM starts worker processes
    sys.exit(main())
