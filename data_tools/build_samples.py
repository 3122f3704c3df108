"""Build rerank training samples: the positive plus K-1 hard negatives from a first-stage retriever.

Example (M-BEIR training queries, 5 candidates per sample, at most 5000 samples per task)::

    python data_tools/build_samples.py --benchmark mbeir --data-root /data/M-BEIR --split train \\
        --retriever lamra --k 5 --max-per-task 5000 --out outputs/data/train_samples.jsonl

Same as `vretrver data samples ...`; run with --help for the options.
"""

import sys

from vretrver.cli_data import run_command

if __name__ == "__main__":
    sys.exit(run_command("samples"))
