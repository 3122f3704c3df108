"""Rerank the same samples with both drivers on the vLLM offline engine; write what each produced.

Used by tests/test_scheduler.py with the vLLM environment's interpreter:

    python tests/vllm_scripts/run_schedulers.py JOB.json OUT.json

JOB.json: {"model": DIR, "engine": {VLLMEngine keywords}, "samples": [Sample.to_dict(), ...],
           "rerank": {RerankConfig fields}, "gen": {GenerationConfig fields}, "chunk": queries per round group}
OUT.json: {"rounds": [query, ...], "continuous": [query, ...], "prefix_caching": bool}, a query being its ranked ids and, per
window, the window start and the text of every turn.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from vretrver.engines.base import GenerationConfig
    from vretrver.engines.vllm_engine import VLLMEngine
    from vretrver.rerank import RerankConfig, rerank_windows
    from vretrver.samples import Sample
    from vretrver.scheduler import rerank_continuous_list

    job = json.loads(Path(sys.argv[1]).read_text())
    samples = [Sample.from_dict(s) for s in job["samples"]]
    cfg = RerankConfig(**job["rerank"], generation=GenerationConfig(**job["gen"]))
    engine = VLLMEngine(job["model"], **job.get("engine", {}))

    def record(results) -> list:
        return [
            {
                "ranked": r.ranked_ids,
                "windows": [
                    [e.sample.meta["window_start"], [t.text for t in e.turns], e.failed] for e in r.episodes
                ],
            }
            for r in results
        ]

    chunk = job["chunk"]
    out = {
        "rounds": record(
            [
                r
                for i in range(0, len(samples), chunk)
                for r in rerank_windows(samples[i : i + chunk], engine, cfg)
            ]
        ),
        "continuous": record(rerank_continuous_list(samples, engine, cfg)),
        "prefix_caching": engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching,
    }
    engine.close()
    tmp = Path(sys.argv[2]).with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, sys.argv[2])


if __name__ == "__main__":  # vLLM starts worker processes
    main()
