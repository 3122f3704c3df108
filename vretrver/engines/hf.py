"""The transformers engine: padded batches through ``model.generate`` on CPU or one GPU.

Slow next to vLLM, but it needs nothing beyond transformers, runs the tiny test models on a laptop, and
is the reference for the prompt tokens every other engine must reproduce.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from PIL import Image

from vretrver.engines.base import Completion, GenerationConfig, cut_at_stop, retry
from vretrver.engines.render import chat_prompt, conversation_images
from vretrver.protocol import Conversation
from vretrver.tools import ToolConfig

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    index: int  # position in the caller's list
    text: str
    images: list[Image.Image]


class HFEngine:
    """``AutoModelForImageTextToText`` + ``AutoProcessor`` from one checkpoint folder (or hub id)."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        attn_implementation: str = "sdpa",
        attempts: int = 2,
        backoff: float = 0.5,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"HFEngine: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            # bfloat16 halves GPU memory; on CPU float32 is the fast path for most kernels.
            if device.startswith("cuda"):
                dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                dtype = "float32"
        if dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(
                f"HFEngine: dtype must be 'auto', 'bfloat16', 'float16' or 'float32', got {dtype!r}"
            )
        if batch_size < 1:
            raise ValueError(f"HFEngine: batch_size must be >= 1, got {batch_size}")
        self.model_path = str(model_path)
        self.device = device
        self.batch_size = batch_size
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.tokenizer = self.processor.tokenizer
        # Left padding: every row's generated tokens then start at the same column.
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.model_path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
        self.model.to(device).eval()
        self.tool_config: ToolConfig = ToolConfig.from_processor(self.processor)
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        self._pad_id = gc.pad_token_id if gc.pad_token_id is not None else self.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = next(iter(self._eos_ids))

    # ------------------------------------------------------------------ public

    def prompt_token_ids(self, conv: Conversation) -> list[int]:
        """The token ids the model reads for ``conv`` (image placeholders expanded)."""
        p = self._prepare(0, conv)
        enc = self.processor(text=[p.text], images=p.images or None, return_tensors="pt")
        return enc["input_ids"][0].tolist()

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(conversations)
        prepared: list[_Prepared] = []
        for i, conv in enumerate(conversations):
            try:
                prepared.append(self._prepare(i, conv))
            except Exception as e:  # one bad conversation must not take the others down
                results[i] = Completion(None, error=f"could not prepare the conversation: {e}")
        # Similar lengths in one batch waste less padding.
        prepared.sort(key=lambda p: len(p.text) + 256 * len(p.images))
        for s in range(0, len(prepared), self.batch_size):
            chunk = prepared[s : s + self.batch_size]
            for p, out in zip(chunk, self._run_batch(chunk, gen), strict=True):
                results[p.index] = out
        return [r if r is not None else Completion(None, error="no result") for r in results]

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # ------------------------------------------------------------------ internals

    def _prepare(self, index: int, conv: Conversation) -> _Prepared:
        return _Prepared(index, chat_prompt(self.processor, conv), conversation_images(conv))

    def _run_batch(self, chunk: list[_Prepared], gen: GenerationConfig) -> list[Completion]:
        """Generate for a batch; on failure retry, then go one by one so only the culprit fails."""
        try:
            return retry(lambda: self._generate(chunk, gen), attempts=self.attempts, backoff=self.backoff)
        except Exception as e:
            if len(chunk) == 1:
                log.warning("generation failed: %s: %s", type(e).__name__, e)
                return [Completion(None, error=f"generation failed: {type(e).__name__}: {e}")]
            log.warning("a batch of %d failed (%s); retrying one by one", len(chunk), type(e).__name__)
            self._free_cache()
        outs = []
        for p in chunk:
            try:
                outs.append(self._generate([p], gen))
            except Exception as e:
                outs.append([Completion(None, error=f"generation failed: {type(e).__name__}: {e}")])
        return [o[0] for o in outs]

    def _free_cache(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _generation_config(self, gen: GenerationConfig):
        from transformers import GenerationConfig as HFGenerationConfig

        # Built from scratch (not the checkpoint's own) so every engine samples with exactly these settings.
        kw: dict[str, Any] = dict(
            max_new_tokens=gen.max_new_tokens,
            eos_token_id=sorted(self._eos_ids),
            pad_token_id=self._pad_id,
        )
        if gen.temperature > 0:
            kw.update(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=0)
        else:
            kw.update(do_sample=False)
        return HFGenerationConfig(**kw)

    def _generate(self, chunk: list[_Prepared], gen: GenerationConfig) -> list[Completion]:
        import torch

        images = [im for p in chunk for im in p.images]
        inputs = self.processor(
            text=[p.text for p in chunk], images=images or None, padding=True, return_tensors="pt"
        ).to(self.device)
        n_in = inputs["input_ids"].shape[1]
        cfg = self._generation_config(gen)
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices()):
            if gen.seed is not None:
                torch.manual_seed(gen.seed)
            stopping = _stop_criteria(self.tokenizer, gen.stop, n_in)
            out = self.model.generate(**inputs, generation_config=cfg, stopping_criteria=stopping)
        attn = inputs["attention_mask"]
        completions = []
        for row in range(len(chunk)):
            new = out[row, n_in:].tolist()
            n_new, hit_eos = len(new), False
            for j, t in enumerate(new):
                if t in self._eos_ids or t == self._pad_id:
                    n_new, hit_eos = j + (0 if t == self._pad_id else 1), True
                    break
            text = self.tokenizer.decode(new[:n_new], skip_special_tokens=True)
            text, stopped = cut_at_stop(text, gen.stop)
            reason = "stop" if stopped or hit_eos else "length"
            completions.append(
                Completion(
                    text=text,
                    finish_reason=reason,
                    n_prompt_tokens=int(attn[row].sum()),
                    n_completion_tokens=n_new,
                )
            )
        return completions

    def _rng_devices(self) -> list[int]:
        import torch

        if self.device.startswith("cuda"):
            return [torch.device(self.device).index or torch.cuda.current_device()]
        return []


def _stop_criteria(tokenizer: Any, stop: list[str], n_prompt: int):
    """Stop each row once its generated text contains a stop string.

    transformers' own ``stop_strings`` precomputes a table over the whole vocabulary (seconds for Qwen's
    151k tokens); decoding the last few generated tokens of each row is cheaper at these batch sizes.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    if not stop:
        return StoppingCriteriaList()
    # Every token decodes to at least one character, so this many tokens cover any stop string.
    window = max(len(s) for s in stop) + 2

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = []
            for row in input_ids[:, n_prompt:].tolist():
                tail = tokenizer.decode(row[-window:], skip_special_tokens=True)
                done.append(any(s in tail for s in stop))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()])
