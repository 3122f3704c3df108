"""Benchmark readers: M-BEIR, the paper's zero-shot sets and the embedded Tux Paint mini-benchmark.

One module per benchmark holds its reader and its :class:`~vretrver.benchmarks.spec.BenchmarkSpec`
(files read, paper metric, default top-N and window, reader options); :mod:`.registry` lists them.

Each reader returns ``list[TaskData]``: queries (samples without candidates, positives filled in,
absolute image paths), the candidate pool and the paper's metric. Query-level extras in ``Sample.meta``:
``candidate_modality`` (the first stage keeps only candidates of that modality), ``gallery`` (GeneCIS:
the only candidate ids the query may rank), ``exclude`` (VIST: ids never to return), ``split``.
"""

from vretrver.benchmarks.common import MissingDataError
from vretrver.benchmarks.registry import (
    BENCHMARKS,
    REQUIRED_FILES,
    TASK_GROUPS,
    get_spec,
    load_benchmark,
    register,
    specs,
)
from vretrver.benchmarks.spec import BenchmarkSpec

__all__ = [
    "BENCHMARKS",
    "REQUIRED_FILES",
    "TASK_GROUPS",
    "BenchmarkSpec",
    "MissingDataError",
    "get_spec",
    "load_benchmark",
    "register",
    "specs",
]
