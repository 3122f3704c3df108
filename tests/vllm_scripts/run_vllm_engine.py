"""Run VLLMEngine on conversations / samples read from a json file; write the results as json.

Used by tests/test_engines_vllm.py, which runs it with the vLLM environment's interpreter:

    python tests/vllm_scripts/run_vllm_engine.py JOB.json OUT.json

JOB.json: {"model": DIR, "engine": {VLLMEngine keywords},
           "tokens": [conversation, ...],                         # prompt_token_ids of each
           "generate": {"conversations": [...], "gen": {...}},    # one continue_conversations call
           "episodes": {"samples": [sample, ...], "gen": {...}},  # run_episodes
           "stop_probe": conversation}   # greedy 8 tokens, then again with a stop string cut from them
A conversation is {"messages": [...], "images": [path, ...]}; a sample is Sample.to_dict().
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from vretrver.engines.base import GenerationConfig
    from vretrver.engines.vllm_engine import VLLMEngine
    from vretrver.protocol import Conversation
    from vretrver.rerank import run_episodes
    from vretrver.samples import Sample

    job = json.loads(Path(sys.argv[1]).read_text())
    out: dict = {}
    t0 = time.perf_counter()
    engine = VLLMEngine(job["model"], **job.get("engine", {}))
    out["start_s"] = time.perf_counter() - t0
    out["tool_config"] = asdict(engine.tool_config)

    def conv(d: dict) -> Conversation:
        return Conversation(d["messages"], d["images"])

    if "tokens" in job:
        out["tokens"] = [engine.prompt_token_ids(conv(c)) for c in job["tokens"]]
    if "generate" in job:
        g = job["generate"]
        comps = engine.continue_conversations(
            [conv(c) for c in g["conversations"]], GenerationConfig(**g["gen"])
        )
        out["generate"] = [asdict(c) for c in comps]
    if "episodes" in job:
        e = job["episodes"]
        samples = [Sample.from_dict(s) for s in e["samples"]]
        eps = run_episodes(samples, engine, gen=GenerationConfig(**e["gen"]))
        out["episodes"] = [ep.to_record() for ep in eps]
    if "stop_probe" in job:
        c = conv(job["stop_probe"])
        free = engine.continue_conversations([c], GenerationConfig(max_new_tokens=8, stop=[]))[0]
        stop = free.text[5:8]
        stopped = engine.continue_conversations([c], GenerationConfig(max_new_tokens=8, stop=[stop]))[0]
        out["stop_probe"] = {"free": asdict(free), "stop": stop, "stopped": asdict(stopped)}
    engine.close()
    tmp = Path(sys.argv[2]).with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, sys.argv[2])


if __name__ == "__main__":  # vLLM starts worker processes
    main()
