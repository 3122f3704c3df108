"""Export kept trajectories as a LLaMA-Factory sharegpt dataset (plus its dataset_info.json entry).

Example::

    python data_tools/export_llamafactory.py --records outputs/data/teacher --data-dir LLaMA-Factory/data \\
        --name vretrver_sft --model Qwen/Qwen2.5-VL-7B-Instruct --cutoff-len 32768

Same as `vretrver data export ...`; run with --help for the options.
"""

import sys

from vretrver.cli_data import run_command

if __name__ == "__main__":
    sys.exit(run_command("export"))
