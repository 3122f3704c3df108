"""LLaMA-Factory's own SFT data pipeline on an exported dataset, for checks: the only module that imports
``llamafactory``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from vretrver.integrations.llamafactory.rows import template_for_model


def render_with_llamafactory(
    data_dir: str | os.PathLike,
    dataset: str,
    model_path: str | os.PathLike,
    template: str | None = None,
    cutoff_len: int = 32768,
    image_max_pixels: int = 2_000_000,
    image_min_pixels: int = 32 * 32,
    work_dir: str | os.PathLike | None = None,
) -> tuple[list[dict[str, list[int]]], Any]:
    """Run ``dataset`` through LLaMA-Factory's own SFT data pipeline (converter, template, multimodal
    plugin, tokenizer) and return the rows (``input_ids``, ``labels``) and the tokenizer it used.

    ``work_dir`` receives the datasets cache and the (unused) output dir; a temporary folder by default.
    """
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="vretrver-lf-"))
    args = {
        "model_name_or_path": str(model_path),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": str(data_dir),
        "template": template or template_for_model(model_path),
        "cutoff_len": cutoff_len,
        "image_max_pixels": image_max_pixels,
        "image_min_pixels": image_min_pixels,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(work / "out"),
        "cache_dir": str(work / "cache"),
        "report_to": "none",
        "use_cpu": True,
    }
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tmpl = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(tmpl, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    rows = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in module["train_dataset"]]
    return rows, tokenizer_module["tokenizer"]
