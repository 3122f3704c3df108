"""Rejection sampling for RFT: k trajectories per sample from the SFT model, keep the accepted ones.

Example::

    python data_tools/rejection_sample.py --samples outputs/data/train_samples.jsonl --out outputs/data/rft \\
        --engine vllm --model outputs/sft/qwen2_5_vl_7b --k 8 --temperature 1.0

Same as `vretrver data rft ...`; run with --help for the options.
"""

import sys

from vretrver.cli_data import run_command

if __name__ == "__main__":
    sys.exit(run_command("rft"))
