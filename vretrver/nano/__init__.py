"""V-Retrver-nano: a synthetic benchmark where zooming decides, and a model small enough to train on a CPU.

:mod:`.data` generates the benchmark, :mod:`.teacher` writes the rule-based trajectories that name what
each crop shows, :mod:`.tokenizer` trains the small vocabulary, :mod:`.model` builds the checkpoint.
"""
