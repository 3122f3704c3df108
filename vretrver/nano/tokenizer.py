"""The nano model's own small tokenizer: byte-level BPE learnt from the texts of the protocol.

A reranker's output layer has one row per token; with Qwen's 151,665 tokens it dwarfs a 128-wide model
and dominates its training time. The nano tokenizer keeps everything else of Qwen2.5-VL's tokenizer:
the same NFC normaliser, pre-tokeniser (the split pattern, digits one by one) and byte-level decoder,
the 256 byte tokens (so any text still encodes and decodes exactly), and the 22 added tokens of
Qwen2.5-VL with their flags (``<|im_start|>``, ``<|image_pad|>``, ``<tool_call>`` ...), copied from the
real Qwen tokenizer (:func:`vretrver.testing.tiny_models.qwen_tokenizer_dir`) and placed, as in Qwen's,
after the learnt vocabulary. Only the merges are new: learnt from the chat-template renderings of nano
conversations (profile ``v-retrver``, the rule-based teacher's turns and the tool observations) and the
tools' error texts, so these texts take few tokens. The result is a few hundred to a couple of thousand
tokens, saved as a ``Qwen2Tokenizer`` that ``AutoTokenizer`` and ``AutoProcessor`` load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image

DEFAULT_VOCAB_SIZE = 2048  # an upper bound: the learnt merges run out well before it on nano's texts
CORPUS_QUERIES = 60  # per task: nano's texts repeat, more only raises the merge counts
PROFILE = "v-retrver"
QWEN25VL_LAST_ID = 151664  # <|file_sep|>, the last added token of Qwen2.5-VL's tokenizer


def qwen25vl_added_tokens() -> list[dict[str, Any]]:
    """Qwen2.5-VL's added tokens (content and flags) in id order, from the real Qwen tokenizer files.

    Those files are Qwen3's; Qwen2.5-VL's tokenizer has the ones up to id 151664 (the four after it,
    ``<tool_response>`` ... ``</think>``, are plain text to Qwen2.5-VL).
    """
    from vretrver.testing.tiny_models import qwen_tokenizer_dir

    qwen = json.loads((qwen_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    return sorted((t for t in qwen["added_tokens"] if t["id"] <= QWEN25VL_LAST_ID), key=lambda t: t["id"])


def _tool_error_texts() -> list[str]:
    """What the tools answer to malformed calls: the model sees these in observations."""
    from vretrver.tools import ToolConfig, crop_image, select_images

    cfg, img = ToolConfig(), Image.new("RGB", (224, 224))
    images = [None, img, img]
    calls = [
        (crop_image, {}),
        (crop_image, {"bbox_2d": [1, 2]}),
        (crop_image, {"bbox_2d": [0, 0, 5, 5]}),
        (crop_image, {"bbox_2d": [0, 0, 5, 5], "target_image": 0}),
        (crop_image, {"bbox_2d": [0, 0, 5, 5], "target_image": 9}),
        (crop_image, {"bbox_2d": [5, 5, 1, 1], "target_image": 1}),
        (crop_image, {"bbox_2d": [-1, 0, 5, 5], "target_image": 1}),
        (crop_image, {"bbox_2d": [900, 900, 950, 950], "target_image": 1}),
        (select_images, {}),
        (select_images, {"target_images": []}),
        (select_images, {"target_images": [1, 2, 3, 4, 5, 6]}),
        (select_images, {"target_images": ["a"]}),
    ]
    return [tool(args, images, cfg).error or "" for tool, args in calls]


def nano_conversations(n_per_task: int = CORPUS_QUERIES, seed: int = 0) -> list[list[dict[str, Any]]]:
    """Whole nano conversations (chat messages) as the rule-based teacher plays them on the train split.

    Built in memory: images are placeholders (the chat template shows an image as the same tokens
    whatever it holds), so nothing is written to disk.
    """
    from vretrver.nano import data
    from vretrver.nano.teacher import plan_turns
    from vretrver.protocol import build_conversation, load_profile, observation_message
    from vretrver.samples import Candidate

    profile = load_profile(PROFILE)
    cfg = data.tool_config()
    img = Image.new("RGB", (data.IMAGE_SIZE, data.IMAGE_SIZE))
    out = []
    for task in data.TASKS:
        for i in range(n_per_task):
            spec = data.query_spec(task, "train", i, seed, data.DEFAULT_K)
            k = len(spec.candidates)
            sample = data.spec_sample(spec, str(i), [f"{j}.png" for j in range(k)])
            sample.candidates = [Candidate(cid, image=f"{cid}.png") for cid in sample.meta["gallery"]]
            conv = build_conversation(sample, profile, cfg.coordinates, k)
            turns = plan_turns(sample, cfg, k, [None] + [img] * k)
            for j, turn in enumerate(turns, 1):
                conv.add_assistant(turn)
                if j < len(turns):
                    parts, shown = observation_message(profile, "crop_image", [j], [img])
                    conv.add_user(parts, shown)
            out.append(conv.messages)
    return out


def corpus_texts(n_per_task: int = CORPUS_QUERIES, seed: int = 0) -> list[str]:
    """The training texts: nano conversations rendered by the Qwen2.5-VL chat template, tool errors."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from vretrver.testing.tiny_models import chat_template_text

    rendered, _ = render_jinja_template(
        conversations=nano_conversations(n_per_task, seed), chat_template=chat_template_text("qwen2_5_vl")
    )
    return list(rendered) + _tool_error_texts()


def train_tokenizer(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """A ``tokenizers.Tokenizer``: Qwen's pipeline, merges learnt from ``texts``, Qwen2.5-VL's added tokens."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers

    from vretrver.testing.tiny_models import qwen_tokenizer_dir

    qwen = json.loads((qwen_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    model = {k: v for k, v in qwen["model"].items() if k not in ("vocab", "merges")}
    skeleton = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        **{k: qwen[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")},
        "model": {**model, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    added = qwen25vl_added_tokens()
    # The added tokens are matched before BPE runs: leave them out of the texts merges are learnt from.
    marker = re.compile("|".join(re.escape(t["content"]) for t in added))
    pieces = [p for t in texts for p in marker.split(t) if p]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(pieces, trainer=trainer)
    for t in added:  # one by one, in Qwen's order, so the ids follow it
        token = AddedToken(
            t["content"],
            single_word=t["single_word"],
            lstrip=t["lstrip"],
            rstrip=t["rstrip"],
            normalized=t["normalized"],
            special=t["special"],
        )
        (tok.add_special_tokens if t["special"] else tok.add_tokens)([token])
    return tok


def save_tokenizer(tok: Any, out_dir: str | Path) -> Path:
    """Write ``tok`` as a Hugging Face ``Qwen2Tokenizer`` (tokenizer.json, vocab.json, merges.txt and a
    tokenizer_config.json shaped like Qwen's, with the new ids and no chat template)."""
    from vretrver.testing.tiny_models import qwen_tokenizer_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json and merges.txt, for readers that want them
    cfg = json.loads((qwen_tokenizer_dir() / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.pop("chat_template", None)
    added = qwen25vl_added_tokens()
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    cfg["added_tokens_decoder"] = {str(tok.token_to_id(t["content"])): {k: t[k] for k in keys} for t in added}
    names = {t["content"] for t in added}
    cfg["additional_special_tokens"] = [t for t in cfg.get("additional_special_tokens", []) if t in names]
    (out / "tokenizer_config.json").write_text(
        json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return out


def build_nano_tokenizer(
    out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE, n_per_task: int = CORPUS_QUERIES, seed: int = 0
) -> Path:
    """Learn the nano tokenizer from the protocol's texts and save it into ``out_dir`` (a few seconds)."""
    return save_tokenizer(train_tokenizer(corpus_texts(n_per_task, seed), vocab_size), out_dir)
