"""The vLLM offline engine: all conversations of a round in one ``LLM.generate`` call.

vLLM schedules them with continuous batching, so a round costs about its longest turn. The prompt text
comes from the same processor chat template as every other engine (``vretrver.engines.render``); vLLM
expands the image placeholders itself, and :meth:`VLLMEngine.prompt_token_ids` reports the ids it used.

For continuous scheduling (:mod:`vretrver.scheduler`), :meth:`VLLMEngine.turn_stream` adds each turn to
vLLM's engine as soon as it is ready and steps the engine itself, handing back the requests that
finished at each step. Prefix caching is on (vLLM's default, set explicitly): the turns of an episode
and the windows of a query share their first tokens (the system prompt, the query), and vLLM reuses
their KV cache instead of computing it again; the prompts themselves are unchanged.

Scripts that create this engine need an ``if __name__ == "__main__":`` guard (vLLM starts worker
processes). On CPU set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) before starting.
"""

from __future__ import annotations

import logging
from typing import Any

from vretrver.engines.base import Completion, GenerationConfig, cut_at_stop, retry
from vretrver.engines.render import chat_prompt, conversation_images
from vretrver.protocol import Conversation
from vretrver.tools import ToolConfig

log = logging.getLogger(__name__)

# The query, a window of 20 candidates and two tool calls of up to four images each fit.
DEFAULT_IMAGE_LIMIT = 32


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = 32768,
        gpu_memory_utilization: float = 0.9,
        limit_mm_per_prompt: dict[str, Any] | None = None,
        seed: int = 0,
        attempts: int = 2,
        **engine_kwargs: Any,
    ):
        from transformers import AutoProcessor
        from vllm import LLM

        self.model_path = str(model_path)
        self.attempts = max(1, attempts)
        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.tool_config: ToolConfig = ToolConfig.from_processor(self.processor)
        kw: dict[str, Any] = dict(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            # No video unless asked: its dummy inputs make the start-up warm-up slow, and reranking sends none.
            limit_mm_per_prompt={"image": DEFAULT_IMAGE_LIMIT, "video": 0, **(limit_mm_per_prompt or {})},
            seed=seed,
            enable_prefix_caching=True,
        )
        if max_model_len is not None:
            kw["max_model_len"] = max_model_len
        kw.update(engine_kwargs)
        self.llm = LLM(**kw)

    # ------------------------------------------------------------------ public

    def prompt_token_ids(self, conv: Conversation) -> list[int]:
        """The prompt token ids vLLM uses for ``conv`` (its own multimodal processing, placeholders expanded)."""
        from vllm import SamplingParams

        out = self.llm.generate(
            [self._request(conv)], SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False
        )
        return list(out[0].prompt_token_ids)

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(conversations)
        ready: list[tuple[int, dict[str, Any]]] = []
        for i, conv in enumerate(conversations):
            try:
                ready.append((i, self._request(conv)))
            except Exception as e:  # one bad conversation must not take the others down
                results[i] = Completion(None, error=f"could not prepare the conversation: {e}")
        params = self._sampling_params(gen)
        if ready:
            try:
                outs = retry(lambda: self._generate([r for _, r in ready], params), attempts=self.attempts)
                for (i, _), out in zip(ready, outs, strict=True):
                    results[i] = self._completion(out, gen)
            except Exception as e:
                # vLLM validates requests as it adds them (length, image count), failing the whole call:
                # go one by one so only the offending conversation fails.
                log.warning(
                    "a call of %d requests failed (%s); retrying one by one", len(ready), type(e).__name__
                )
                for i, req in ready:
                    try:
                        results[i] = self._completion(self._generate([req], params)[0], gen)
                    except Exception as e1:
                        results[i] = Completion(None, error=f"generation failed: {type(e1).__name__}: {e1}")
        return [r if r is not None else Completion(None, error="no result") for r in results]

    def turn_stream(self, max_inflight: int) -> _VLLMTurns:
        """Turns go into vLLM's engine one by one and come back as they finish (continuous batching)."""
        return _VLLMTurns(self)

    def close(self) -> None:
        import gc

        llm, self.llm = self.llm, None
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()

    # ------------------------------------------------------------------ internals

    def _request(self, conv: Conversation) -> dict[str, Any]:
        req: dict[str, Any] = {"prompt": chat_prompt(self.processor, conv)}
        images = conversation_images(conv)
        if images:
            req["multi_modal_data"] = {"image": images}
        return req

    def _generate(self, requests: list[dict[str, Any]], params: Any) -> list[Any]:
        if self.llm is None:
            raise RuntimeError("the engine is closed")
        return self.llm.generate(requests, params, use_tqdm=False)

    @staticmethod
    def _sampling_params(gen: GenerationConfig) -> Any:
        from vllm import SamplingParams

        # top_k / repetition_penalty spelled out: the same sampling as the other engines, whatever the
        # checkpoint's generation_config suggests.
        return SamplingParams(
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p if gen.temperature > 0 else 1.0,
            top_k=0,
            repetition_penalty=1.0,
            seed=gen.seed,
            stop=list(gen.stop) or None,
            include_stop_str_in_output=True,
            skip_special_tokens=True,
        )

    @staticmethod
    def _completion(out: Any, gen: GenerationConfig) -> Completion:
        o = out.outputs[0]
        text, _ = cut_at_stop(o.text, gen.stop)
        return Completion(
            text=text,
            finish_reason=o.finish_reason,
            n_prompt_tokens=len(out.prompt_token_ids or []),
            n_completion_tokens=len(o.token_ids),
        )


class _VLLMTurns:
    """A :class:`vretrver.scheduler.TurnStream` over the offline engine: ``submit`` adds a request to
    vLLM's engine, ``wait`` steps the engine until at least one request has finished."""

    def __init__(self, engine: VLLMEngine):
        if engine.llm is None:
            raise RuntimeError("the engine is closed")
        self.engine = engine
        self.llm = engine.llm
        self.pending: dict[str, tuple[int, GenerationConfig]] = {}
        self.ready: list[tuple[int, Completion]] = []

    def submit(self, key: int, conv: Conversation, gen: GenerationConfig) -> None:
        try:
            req = self.engine._request(conv)
        except Exception as e:  # as in continue_conversations: this conversation fails, not the run
            self.ready.append((key, Completion(None, error=f"could not prepare the conversation: {e}")))
            return
        try:
            # vLLM validates a request as it is added (length, image count).
            (rid,) = self.llm.enqueue([req], self.engine._sampling_params(gen), use_tqdm=False)
        except Exception as e:
            self.ready.append((key, Completion(None, error=f"generation failed: {type(e).__name__}: {e}")))
            return
        # enqueue answers with vLLM's internal id ("<id>-<random suffix>"); outputs carry the id as given.
        self.pending[str(rid).rsplit("-", 1)[0]] = (key, gen)

    def wait(self) -> list[tuple[int, Completion]]:
        out, self.ready = self.ready, []
        core = self.llm.llm_engine
        while not out and self.pending:
            if not core.has_unfinished_requests():
                raise RuntimeError(f"vLLM has no request left but {len(self.pending)} turns never finished")
            for o in core.step():
                if getattr(o, "finished", False) and o.request_id in self.pending:
                    key, gen = self.pending.pop(o.request_id)
                    out.append((key, VLLMEngine._completion(o, gen)))
        return out

    def close(self) -> None:
        if self.pending and self.engine.llm is not None:
            self.llm.llm_engine.abort_request(list(self.pending))
        self.pending = {}
