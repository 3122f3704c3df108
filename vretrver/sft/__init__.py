"""Training data for the SFT and RFT stages of the paper's curriculum (teacher trajectories for SFT,
rejection-sampled ones from the SFT model for RFT; RL follows).

* :mod:`~vretrver.sft.hard_negatives`: rerank samples, the positive plus K-1 retriever hard negatives;
* :mod:`~vretrver.sft.synthesis`: teacher synthesis and rejection sampling (episodes, filter, records);
* :mod:`~vretrver.sft.filter`: the rule filter and per-task statistics;
* :mod:`~vretrver.sft.records`: the trajectory record format shared with the LLaMA-Factory export;
* :mod:`~vretrver.sft.coordinates`: crop-box conversion between model families;
* :mod:`~vretrver.sft.scripted`: an engine that replays prepared turns (tests, dry runs);
* :mod:`~vretrver.sft.pipeline`: the per-stage numbers of a run of ``local_scripts/run_pipeline.sh``.

The rule-based teacher (``--engine oracle``, synthetic trajectories from the ground truth) is
:mod:`vretrver.engines.oracle`.

The export itself lives in :mod:`vretrver.integrations.llamafactory`.
"""

from vretrver.sft.filter import FilterConfig, format_stats, judge, summarize
from vretrver.sft.hard_negatives import HardNegativeConfig, build_training_samples, make_sample
from vretrver.sft.records import escape_placeholders, escape_sample, iter_records, read_records
from vretrver.sft.scripted import ScriptedEngine, script_from_table
from vretrver.sft.synthesis import SynthesisConfig, rejection_sample, synthesize

__all__ = [
    "FilterConfig",
    "HardNegativeConfig",
    "ScriptedEngine",
    "SynthesisConfig",
    "build_training_samples",
    "escape_placeholders",
    "escape_sample",
    "format_stats",
    "iter_records",
    "judge",
    "make_sample",
    "read_records",
    "rejection_sample",
    "script_from_table",
    "summarize",
    "synthesize",
]
