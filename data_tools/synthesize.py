"""Synthesise SFT trajectories with a teacher behind an OpenAI-compatible server, rule-filter them.

Example (a vLLM server with Qwen2.5-VL-72B-Instruct on localhost:8000)::

    python data_tools/synthesize.py --samples outputs/data/train_samples.jsonl --out outputs/data/teacher \\
        --engine openai --model Qwen/Qwen2.5-VL-72B-Instruct \\
        --engine-args '{"base_url": "http://localhost:8000/v1", "concurrency": 64}' --attempts 4

Same as `vretrver data synthesize ...`; run with --help for the options.
"""

import sys

from vretrver.cli_data import run_command

if __name__ == "__main__":
    sys.exit(run_command("synthesize"))
