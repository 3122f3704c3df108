"""Drive verl's own training rollout dump (PPOTrainer._log_rollout_data) with our module installed, in the CPU
RL environment, against an in-memory stand-in for verl's transfer queue; prints the dumped lines as JSON.

usage: python rollout_dump.py TOKENIZER_DIR OUT_DIR
"""

import functools
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import verl  # noqa: F401  (imports VERL_USE_EXTERNAL_MODULES, hence our module)
from transformers import AutoTokenizer
from verl.trainer.ppo.v1 import trainer_base

tokenizer_dir, out = sys.argv[1], Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(tokenizer_dir)
keys = ["s1_0_0", "s0_1_0", "s0_0_0"]  # stored out of order: the dump sorts by sample and rollout
terms = {
    "s0_0_0": {"score": 1.1, "format": 0.5, "rank": 0.6, "tool": 0.0},
    "s0_1_0": {"score": 0.5, "format": 0.5, "rank": 0.0, "tool": 0.0, "note": "text is not a term"},
    "s1_0_0": {},  # a trajectory whose reward left no terms
}


class Padded:
    def __init__(self, rows):
        self.rows = rows

    def to_padded_tensor(self, padding):
        width = max(len(r) for r in self.rows)
        return torch.tensor([r + [padding] * (width - len(r)) for r in self.rows])


class Queue:
    """kv_batch_get as verl's trainer calls it: the selected fields of the given keys, in their order."""

    def kv_batch_get(self, keys, partition_id, select_fields):
        assert partition_id == "train"
        rows = {
            "uid": np.array(keys, dtype=object),
            "prompts": Padded([tok.encode(f"prompt {k}") for k in keys]),
            "responses": Padded([tok.encode(f"answer {k}") for k in keys]),
            "rm_scores": torch.tensor([[0.0, terms[k].get("score", 0.0)] for k in keys]),
            "reward_model": np.array([{"ground_truth": [1]} for _ in keys], dtype=object),
            "extra_fields": np.array(
                [{"reward_extra_info": terms[k], "turns": 2} for k in keys], dtype=object
            ),
        }
        return {f: rows[f] for f in select_fields}


trainer_base.tq = Queue()
cls = trainer_base.PPOTrainer
me = types.SimpleNamespace(
    tokenizer=tok, global_steps=3, _dump_executor=ThreadPoolExecutor(1), _dump_futures=[],
    _write_generations=cls._write_generations,
)  # fmt: skip
me._dump_generations = functools.partial(cls._dump_generations, me)
batch = types.SimpleNamespace(keys=keys, partition_id="train")
cls._log_rollout_data(me, batch, {}, str(out))
for f in me._dump_futures:
    f.result()
print("PATCHED", bool(getattr(cls._log_rollout_data, "_vretrver", False)))
print((out / "3.jsonl").read_text())
