"""The evaluation pipeline in its stages: config -> input repair -> first stage -> reranking -> scoring.

:mod:`vretrver.evaluate` gathers the public names; the modules here are its parts.
"""
