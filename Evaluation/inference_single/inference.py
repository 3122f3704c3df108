"""Rerank the candidates of one query with a V-Retrver checkpoint; print the ranking and every reasoning
turn; write the HTML view of the episode.

This is ``vretrver rerank`` with the same options (``--help`` lists them). Examples::

    # a text query against a folder of images, on a GPU
    python Evaluation/inference_single/inference.py --reranker V-Retrver/V-Retrver-7B \
        --query-text "A white kitten." --candidates-dir photos/ \
        --engine-args '{"device": "cuda", "dtype": "bfloat16"}'

    # an image + text query against candidates listed in a jsonl ({"id", "text", "image"} per line)
    python Evaluation/inference_single/inference.py --reranker /path/to/checkpoint \
        --query-image shirt.jpg --query-text "the same shirt in blue" --candidates-jsonl candidates.jsonl

    # the mechanics on a laptop, with a tiny random model (its ranking is meaningless)
    python Evaluation/inference_single/inference.py --reranker tiny \
        --query-text "A frog." --candidates a.png b.png c.png

Candidates are taken in the order given, numbered 1..K (more than 20 are reranked in sliding windows of
20). The trajectory and the HTML view go to ``--out`` (default ``runs/rerank``).
"""

import sys

from vretrver.cli import main

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
