"""The nano model: a randomly initialised Qwen2.5-VL small enough to train on a CPU.

Text model 128 wide, 4 layers (4 heads of 32, 2 key/value heads); vision tower 2 layers, 64 wide; the
nano tokenizer (:mod:`.tokenizer`, under a thousand tokens) so the output layer is a small part of the
work; and an image processor whose pixel budget is exactly 56 x 56 (``min_pixels = max_pixels = 3136``):
every image, whole or cropped, becomes 2 x 2 merged vision tokens. A 224 x 224 nano image is shrunk 4x,
which erases its mark (:mod:`.data`); a ``crop_image`` of the mark comes back at about its own size.

The folder holds what the tiny test models hold (config.json, weights, tokenizer files, processor
config and the Qwen2.5-VL chat template), so it loads in transformers, LLaMA-Factory and vLLM like a
full-size checkpoint. :func:`nano_model_path` builds it once into the cache.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from vretrver.nano.data import INPUT_SIDE

BUILDER_VERSION = 2  # bump whenever the built checkpoint changes
MARKER_FILE = "vretrver_nano.json"
NAME = "qwen2_5_vl-nano"
# Qwen2.5-VL's vision settings: patch 14, 2 x 2 merge (a merged token covers 28 x 28 pixels), CLIP's
# pixel statistics.
PATCH, MERGE = 14, 2
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
TEXT = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4}
VISION = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2}


def build_processor(tokenizer):
    """The Qwen2.5-VL processor with the nano pixel budget and the Qwen2.5-VL chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from vretrver.testing.tiny_models import chat_template_text

    pixels = INPUT_SIDE * INPUT_SIDE
    common = {
        "patch_size": PATCH,
        "temporal_patch_size": 2,
        "merge_size": MERGE,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "size": {"shortest_edge": pixels, "longest_edge": pixels},
    }
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**common),
        chat_template=chat_template_text("qwen2_5_vl"),
    )


def _token_ids(tokenizer) -> dict[str, int]:
    names = {
        "eot": "<|endoftext|>",
        "im_end": "<|im_end|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
        "image_pad": "<|image_pad|>",
        "video_pad": "<|video_pad|>",
    }
    return {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in names.items()}


def _config(ids: dict[str, int], vocab_size: int):
    from transformers import Qwen2_5_VLConfig

    text = {
        **TEXT,
        "vocab_size": vocab_size,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": ids["eot"],
        "eos_token_id": ids["im_end"],
        "pad_token_id": ids["eot"],
        "max_window_layers": TEXT["num_hidden_layers"],
        "use_sliding_window": False,
        # head_dim 32 (vLLM's CPU attention needs >= 32); the M-RoPE sections sum to head_dim / 2.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    }
    vision = {
        **VISION,
        "in_channels": 3,
        "out_hidden_size": TEXT["hidden_size"],
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [VISION["depth"] - 1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=False,
    )


def build_nano_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the nano checkpoint (random weights, nano tokenizer, processor) into ``out_dir``, which must
    be missing or empty. The same seed gives the same files' contents. Takes about 20 seconds, most of it
    learning the tokenizer."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: expected a missing or empty folder to build the nano model into")

    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from vretrver.nano.tokenizer import build_nano_tokenizer
    from vretrver.testing.tiny_models import chat_template_text, save_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="vretrver-nano-tok-") as tmp:
        build_nano_tokenizer(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.chat_template = chat_template_text("qwen2_5_vl")
    ids = _token_ids(tokenizer)
    processor = build_processor(tokenizer)
    vocab_size = -(-len(tokenizer) // 64) * 64
    with torch.random.fork_rng(devices=[]):  # seeding must not disturb the caller's random stream
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(_config(ids, vocab_size))
    # float32: the model is meant to be trained, and on a CPU bfloat16 is no faster at this size.
    model = model.eval()
    info = {
        "name": NAME,
        "seed": seed,
        "builder_version": BUILDER_VERSION,
        "note": "Randomly initialised: train it (SFT) before expecting sensible output.",
        "tokenizer": f"nano byte-level BPE ({len(tokenizer)} tokens)",
        "input_pixels": f"{INPUT_SIDE}x{INPUT_SIDE}",
    }
    save_random_checkpoint(out, model, processor, ids, info, MARKER_FILE)
    return out


def nano_model_path(cache_root: str | Path | None = None) -> Path:
    """Path of the cached nano model, building it on first use.

    It lives in ``<cache_root>/nano-models/qwen2_5_vl-nano-v<BUILDER_VERSION>`` (``cache_root`` defaults
    to :func:`vretrver.testing.tiny_models.default_cache_root`), built in a temporary folder renamed
    into place, so concurrent callers never see a half-written model.
    """
    from vretrver.testing.tiny_models import cached_build, default_cache_root

    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return cached_build(root / "nano-models" / f"{NAME}-v{BUILDER_VERSION}", build_nano_model, MARKER_FILE)
