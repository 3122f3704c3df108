"""The ``nano`` benchmark's spec: synthetic images whose deciding mark is lost at the nano model's input
unless it crops (reader and generator in :mod:`vretrver.nano.data`).

It reads no files: the images are generated on first use under the cache (or ``--data-root``), so it
needs no data root. Each query ranks its own gallery of k images (default 5, ``--reader-args k=...``),
hence top-N and window k and the metrics R@1 to R@3 (R@k would always be 1).
"""

from __future__ import annotations

from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.nano.data import DEFAULT_K, METRIC, SPLITS, TASKS, load_nano

SPEC = BenchmarkSpec(
    name="nano",
    description="synthetic (V-Retrver-nano): a small mark decides, lost at the nano model's input unless cropped",
    reader=load_nano,
    files=(),  # generated, nothing to download
    paper_metric=METRIC,
    tasks=TASKS,
    splits=SPLITS,
    top_n=DEFAULT_K,
    window=DEFAULT_K,
    needs_data_root=False,
    ks=(1, 2, 3),
)
