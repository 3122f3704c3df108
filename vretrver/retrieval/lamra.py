"""A LamRA-style embedder: a Qwen-VL model whose last hidden state at a fixed prompt position is the embedding.

The convention of LamRA ("LamRA: Large Multimodal Model as Your Advanced Retrieval Assistant"; checkpoints
``code-kunkun/LamRA-Ret`` on Qwen2-VL-7B and ``code-kunkun/LamRA-Ret-Qwen2.5VL-7b``), restated:

* Every query and candidate becomes a one-turn chat rendered by the checkpoint's own chat template
  (so the default system turn of Qwen's template is part of it). The user turn holds the image(s) first,
  then the text followed by an instruction to summarise the input in one word; the assistant turn is
  ``<emb>.``, where ``<emb>`` is a token LamRA adds to the vocabulary.
* The embedding is the final-layer hidden state (after the last norm) of the token *just before*
  ``<emb>``, i.e. the newline that opens the assistant turn, L2-normalised.
* Texts are cleaned the way LamRA's data loaders clean them: stripped, carriage returns and surrounding
  double quotes removed, first letter upper-cased, a full stop added unless the text already ends with
  ``.``, ``?`` or ``!``. A query text is prefixed by its task instruction (M-BEIR's) and cleaned again.
  Texts are not cut: LamRA cuts query and candidate texts to 480 tokens only when training; its evaluation
  embeds them whole (``max_text_tokens=480`` gives the training-time cut).
* Images are resized so that they hold between 4 and 300 patches of 28 x 28 pixels.

Because attention is causal, nothing after the embedding position changes it; we therefore feed the
rendered prompt only up to (not including) ``<emb>`` and read the last real token. This gives the same
vector as running the whole sequence and indexing before ``<emb>`` (a test checks this), and it works
whether or not the checkpoint's tokenizer already knows ``<emb>``.

The prompt wording is data (:class:`LamRAPrompts`): pass another one to match a differently trained model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vretrver.lamra_text import lamra_clean as clean_text
from vretrver.retrieval.base import l2_normalize, load_rgb, settings_tag
from vretrver.samples import Candidate, Sample

PATCH_PIXELS = 28 * 28


@dataclass(frozen=True)
class LamRAPrompts:
    """What LamRA's retriever was trained to see. ``{text}`` is the cleaned text of the item."""

    text: str = "{text}\nSummarize above sentence in one word: "
    image: str = "\nSummarize above image in one word: "
    image_text: str = "{text}\nSummarize above image and sentence in one word: "
    answer: str = "<emb>."  # the assistant turn
    marker: str = "<emb>"  # the embedding is read at the token right before this marker

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LamRAPrompts:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"{path}: unknown prompt fields {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


class LamRAEmbedder:
    """LamRA-style embedder over any transformers image-text-to-text checkpoint (Qwen2-VL, Qwen2.5-VL).

    Loads lazily with ``AutoModelForImageTextToText`` / ``AutoProcessor``. ``device="auto"`` picks CUDA when
    available; ``dtype="auto"`` is bfloat16 on a GPU and float32 on a CPU.
    """

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        dtype: str = "auto",
        min_pixels: int = 4 * PATCH_PIXELS,
        max_pixels: int = 300 * PATCH_PIXELS,
        max_text_tokens: int | None = None,
        use_instruction: bool = True,
        attn_implementation: str | None = None,
        prompts: LamRAPrompts | str | os.PathLike | None = None,
    ):
        self.model_path = str(model_path)
        self.device_setting = device
        self.dtype_setting = dtype
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_text_tokens = max_text_tokens
        self.use_instruction = use_instruction
        self.attn_implementation = attn_implementation
        if prompts is None:
            prompts = LamRAPrompts()
        elif not isinstance(prompts, LamRAPrompts):
            prompts = LamRAPrompts.from_json(prompts)
        self.prompts = prompts
        self._model: Any = None
        self._processor: Any = None
        self.dim = self._hidden_size()
        settings = {
            "model": _model_identity(self.model_path),
            "pixels": [min_pixels, max_pixels],
            "max_text_tokens": max_text_tokens,
            "use_instruction": use_instruction,
            "prompts": asdict(prompts),
        }
        base = Path(self.model_path.rstrip("/")).name or "model"
        self.name = f"lamra-{base}-{settings_tag(settings)}"

    # ------------------------------------------------------------------ loading

    def _hidden_size(self) -> int:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(self.model_path)
        text_cfg = getattr(cfg, "text_config", None) or cfg
        return int(text_cfg.hidden_size)

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = self.device_setting
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype: Any = self.dtype_setting
        if dtype == "auto":
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        kw: dict[str, Any] = {"dtype": dtype}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(self.model_path, **kw).eval().to(device)
        self._processor = AutoProcessor.from_pretrained(self.model_path)
        self._model = model
        self.device = device

    # ------------------------------------------------------------------ prompts

    def _truncate(self, text: str) -> str:
        if self.max_text_tokens is None:
            return text
        tok = self._processor.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return tok.decode(ids[: self.max_text_tokens]) if len(ids) > self.max_text_tokens else text

    def _user_text(self, text: str | None, n_images: int, where: str) -> str:
        text = self._truncate(clean_text(text)) if text else ""
        if text and n_images:
            return self.prompts.image_text.format(text=text)
        if text:
            return self.prompts.text.format(text=text)
        if n_images:
            return self.prompts.image
        raise ValueError(f"{where}: neither text nor image to embed")

    def prompt_prefix(self, text: str | None, n_images: int, where: str = "item") -> str:
        """The rendered chat up to the embedding marker (what the model is fed)."""
        self._load()
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": self._user_text(text, n_images, where)})
        messages = [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": self.prompts.answer}]},
        ]
        rendered = self._processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        cut = rendered.find(self.prompts.marker)
        if cut < 0:
            raise ValueError(
                f"the chat template of {self.model_path} dropped the assistant turn {self.prompts.answer!r}; "
                "cannot locate the embedding position"
            )
        return rendered[:cut]

    # ------------------------------------------------------------------ embedding

    def _embed(self, items: list[tuple[str, str | None, list[str]]], batch_size: int) -> np.ndarray:
        import torch

        self._load()
        out = []
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            texts = [self.prompt_prefix(t, len(ims), f"item {iid!r}") for iid, t, ims in chunk]
            images = [load_rgb(p) for _, _, ims in chunk for p in ims]
            enc = self._processor(
                text=texts,
                images=images or None,
                padding=True,
                return_tensors="pt",
                images_kwargs={"min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            ).to(self.device)
            with torch.inference_mode():
                hidden = self._last_hidden_state(enc)
            mask = enc["attention_mask"]
            # Index of the last real token, whichever side the processor pads on.
            last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
            vec = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            out.append(vec.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(np.concatenate(out))

    def _last_hidden_state(self, enc: Any) -> Any:
        # The bare model returns the final (normed) hidden states without computing vocabulary logits,
        # which for a 150k vocabulary would cost more memory than the rest of the forward pass.
        base = getattr(self._model, "model", None)
        if base is not None:
            return base(**enc).last_hidden_state
        return self._model(**enc, output_hidden_states=True).hidden_states[-1]

    def embed_queries(self, queries: list[Sample], batch_size: int = 8) -> np.ndarray:
        items = []
        for q in queries:
            text = q.query.text
            if self.use_instruction and q.query.instruction:
                text = f"{clean_text(q.query.instruction)} {text or ''}"
            items.append((q.id, text, list(q.query.images)))
        return self._embed(items, batch_size)

    def embed_candidates(self, cands: list[Candidate], batch_size: int = 8) -> np.ndarray:
        return self._embed([(c.id, c.text, [c.image] if c.image else []) for c in cands], batch_size)


def _model_identity(model_path: str) -> Any:
    """What names a checkpoint in the cache key: the path, plus file sizes and times for a local folder
    (so retraining into the same folder does not reuse stale embeddings)."""
    p = Path(model_path)
    if not p.is_dir():
        return model_path
    files = sorted(
        f for f in p.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".jinja")
    )
    return [str(p.resolve())] + [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]
