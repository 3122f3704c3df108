"""The reward's terms in verl's training rollout dumps (``trainer.rollout_data_dir``).

Our reward entry returns the EAPO score with its terms (format, rank, tool and the counts behind them), and
verl keeps them with each trajectory as ``reward_extra_info``. verl 0.9.1's v1 trainer, however, writes its
training dumps (one ``<step>.jsonl`` per step) with the score alone: it fetches only prompts, responses,
scores and ground truth from its transfer queue. This module adds the terms to each dumped line, read from
the same trajectory's stored ``extra_fields``, so a run's per-step reward can be split into its terms
afterwards (``vretrver.sft.pipeline.rl_steps``).

It changes what is written to the dump folder and nothing else: no training step reads the dump. verl
imports it in every process through ``VERL_USE_EXTERNAL_MODULES`` (``run_rl.sh`` sets that), and it patches
the trainer class only once verl's own module is imported; a verl without that module or those methods is
left alone.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from vretrver.integrations.verl.import_hooks import after_import

TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_base"
_BATCH = "_vretrver_dump_batch"  # the batch whose dump is being written, kept on the trainer meanwhile
_DUMP_OWN = ("input", "output", "gts", "score", "step", "uid")  # the dump's own columns win over a term


def reward_terms(extra_fields: Sequence[Any], keys: Sequence[str], order: Sequence[str]) -> dict[str, list]:
    """The numeric ``reward_extra_info`` entries of each trajectory, as columns in the order of ``order``.

    ``extra_fields[i]`` belongs to trajectory ``keys[i]``; ``order`` lists the trajectory keys as the dump
    writes them. A term a trajectory lacks is None in its column."""
    by_key = dict(zip(keys, extra_fields))
    rows = []
    for key in order:
        fields = by_key.get(key)
        info = fields.get("reward_extra_info") if isinstance(fields, dict) else None
        rows.append(info if isinstance(info, dict) else {})
    names: list[str] = []
    for info in rows:
        for name, value in info.items():
            if name not in names and name not in _DUMP_OWN and isinstance(value, numbers.Real):
                names.append(name)
    columns = {}
    for name in names:
        values = [info.get(name) for info in rows]
        columns[name] = [float(v) if isinstance(v, numbers.Real) else None for v in values]
    return columns


def _patch(module: ModuleType) -> None:
    trainer = getattr(module, "PPOTrainer", None)
    log = getattr(trainer, "_log_rollout_data", None)
    dump = getattr(trainer, "_dump_generations", None)
    if log is None or dump is None or not hasattr(module, "tq") or getattr(log, "_vretrver", False):
        return

    @functools.wraps(log)
    def log_rollout_data(self, batch, timing_raw, rollout_data_dir):
        setattr(self, _BATCH, batch)
        try:
            return log(self, batch, timing_raw, rollout_data_dir)
        finally:
            setattr(self, _BATCH, None)

    @functools.wraps(dump)
    def dump_generations(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path):
        batch = getattr(self, _BATCH, None)
        order = (reward_extra_infos_dict or {}).get("uid")
        if batch is not None and order is not None:
            data = module.tq.kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"]
            )
            extra = data["extra_fields"]
            extra = extra.tolist() if hasattr(extra, "tolist") else list(extra)
            terms = reward_terms(extra, batch.keys, order)
            reward_extra_infos_dict = {**terms, **reward_extra_infos_dict}
        return dump(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path)

    log_rollout_data._vretrver = True
    trainer._log_rollout_data = log_rollout_data
    trainer._dump_generations = dump_generations


after_import(TRAINER_MODULE, _patch)
