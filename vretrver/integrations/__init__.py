"""Glue to the training frameworks: the only modules that import them (lazily, inside functions).

One module per framework, e.g. :mod:`vretrver.integrations.llamafactory` (export of trajectories as a
LLaMA-Factory sharegpt dataset with its ``dataset_info.json`` entry, validation, and rendering through
LLaMA-Factory's own data pipeline for checks).
"""
