"""verl (0.9.1) integration: RL data, tool classes, the multi-turn agent loop and the reward entry.

* :mod:`.dataset`: samples -> the parquet verl's ``RLHFDataset`` reads (no verl import needed), checked
  by :mod:`.validation`;
* :mod:`.tools`: every registered tool as a verl tool (one class), running :mod:`vretrver.tools`;
* :mod:`.agent_loop`: ``vretrver_agent``, the agent loop that renders our protocol exactly;
* :mod:`.reward`: ``compute_score`` for verl's reward manager (:mod:`vretrver.reward` underneath).

Only :mod:`.tools` and :mod:`.agent_loop` import verl, at module level: they are loaded by verl itself.
"""

AGENT_NAME = "vretrver_agent"
ROLLOUT_RECORD_KEY = "vretrver_rollout"  # the agent loop's record, seen by the reward as extra_info[...]
SAMPLE_INFO_KEY = "vretrver"  # per-sample settings in extra_info
