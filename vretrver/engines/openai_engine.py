"""Any OpenAI-compatible chat server: ``vllm serve``, SGLang, or a hosted teacher model.

Each conversation is one ``POST {base_url}/chat/completions``; a round's conversations go out concurrently.
Images travel as lossless PNG data URLs, in the order of their parts. Transient failures (connection
errors, timeouts, HTTP 408 / 409 / 429 / 5xx) are retried with exponential back-off; a conversation that
still fails gets ``Completion(error=...)`` and the others carry on.

OpenAI's API drops the stop string that ended a completion, but the parser needs the closing tag. On a
vLLM server (detected from ``/models``) the request asks for it to be kept (``include_stop_str_in_output``);
otherwise the engine puts it back, using vLLM's ``stop_reason`` when present and else the tag that the
text leaves open. Start vLLM without ``--reasoning-parser`` so ``<think>`` stays in the text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vretrver.engines.base import Completion, EngineError, GenerationConfig, cut_at_stop, retry
from vretrver.engines.render import count_image_parts, png_data_url
from vretrver.protocol import Conversation, ImageLike
from vretrver.tools import ToolConfig, load_image

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 32,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        tool_config: ToolConfig | None = None,
        processor_path: str | None = None,
        vllm: bool | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        """``vllm=None`` asks the server's ``/models`` once; ``extra_body`` is merged into every request."""
        import httpx

        if concurrency < 1:
            raise ValueError(f"OpenAIEngine: concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            timeout=timeout,
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        if tool_config is not None:
            self.tool_config = tool_config
        elif processor_path is not None:
            from transformers import AutoProcessor

            self.tool_config = ToolConfig.from_processor(AutoProcessor.from_pretrained(processor_path))
        else:
            self.tool_config = ToolConfig()
        self._vllm = vllm
        self._lock = threading.Lock()
        # Query and candidate images go out again every round: encode each once.
        self._urls: OrderedDict[Any, tuple[ImageLike, str]] = OrderedDict()

    # ------------------------------------------------------------------ public

    @property
    def is_vllm(self) -> bool:
        with self._lock:
            if self._vllm is None:
                self._vllm = self._detect_vllm()
            return self._vllm

    def messages(self, conv: Conversation) -> list[dict[str, Any]]:
        """The conversation in the OpenAI chat shape: image parts become data URLs, in order."""
        n = count_image_parts(conv)
        if n != len(conv.images):
            raise ValueError(f"conversation has {n} image parts but {len(conv.images)} images")
        images = iter(enumerate(conv.images))
        out = []
        for m in conv.messages:
            content = m["content"]
            if isinstance(content, str):
                out.append({"role": m["role"], "content": content})
                continue
            parts = []
            for p in content:
                if p.get("type") == "image":
                    i, x = next(images)
                    try:
                        url = self._data_url(x)
                    except (OSError, ValueError) as e:
                        raise ValueError(f"image {i} ({str(x)[:200]}) could not be read: {e}") from e
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                elif p.get("type") == "text":
                    parts.append({"type": "text", "text": p["text"]})
            out.append({"role": m["role"], "content": parts})
        return out

    def request_body(self, conv: Conversation, gen: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(conv),
            "max_tokens": gen.max_new_tokens,
            "temperature": gen.temperature,
            "top_p": gen.top_p if gen.temperature > 0 else 1.0,
        }
        if gen.stop:
            body["stop"] = list(gen.stop)
        if gen.seed is not None:
            body["seed"] = gen.seed
        if self.is_vllm:
            # vLLM extensions: keep the stop string, decode like the other engines, and sample exactly as
            # asked rather than with the checkpoint's generation_config defaults.
            body.update(
                include_stop_str_in_output=True, skip_special_tokens=True, top_k=0, repetition_penalty=1.0
            )
        body.update(self.extra_body)
        return body

    def prompt_token_ids(self, conv: Conversation) -> list[int]:
        """The prompt token ids the server used (vLLM servers only: ``return_token_ids``)."""
        body = self.request_body(conv, GenerationConfig(max_new_tokens=1, stop=[]))
        body["return_token_ids"] = True
        data = self._post(body)
        ids = data.get("prompt_token_ids")
        if not isinstance(ids, list):
            raise EngineError(
                f"{self.base_url}: the server does not return prompt_token_ids (not a vLLM server?)"
            )
        return ids

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        if not conversations:
            return []
        _ = self.is_vllm  # detect once, before the threads start
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(lambda c: self._one(c, gen), conversations))

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ internals

    def _one(self, conv: Conversation, gen: GenerationConfig) -> Completion:
        try:
            body = self.request_body(conv, gen)
        except Exception as e:
            return Completion(None, error=f"could not prepare the conversation: {e}")
        try:
            data = self._post(body)
            return self._completion(data, gen)
        except (_Retryable, _Fatal) as e:
            return Completion(None, error=str(e))
        except Exception as e:  # an odd response must not stop the round
            return Completion(None, error=f"bad response: {type(e).__name__}: {e}")

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        tries = self.max_retries + 1

        def once() -> dict[str, Any]:
            try:
                r = self.client.post(url, json=body)
            except httpx.TimeoutException as e:
                raise _Retryable(f"timed out after {tries} tries ({type(e).__name__})") from e
            except httpx.TransportError as e:
                raise _Retryable(f"connection failed after {tries} tries: {type(e).__name__}: {e}") from e
            if r.status_code in RETRY_STATUS:
                raise _Retryable(f"HTTP {r.status_code} after {tries} tries: {r.text[:300]}")
            if r.status_code >= 400:
                raise _Fatal(f"HTTP {r.status_code}: {r.text[:500]}")
            try:
                return r.json()
            except json.JSONDecodeError as e:
                raise _Retryable(f"invalid JSON in the response after {tries} tries: {r.text[:200]!r}") from e

        return retry(once, attempts=tries, backoff=self.backoff, retry_on=(_Retryable,))

    def _completion(self, data: dict[str, Any], gen: GenerationConfig) -> Completion:
        if "choices" not in data or not data["choices"]:
            raise _Fatal(f"response without choices: {json.dumps(data)[:300]}")
        choice = data["choices"][0]
        msg = choice.get("message") or {}
        text = _message_text(msg)
        finish = choice.get("finish_reason")
        if finish == "stop" and gen.stop and not any(text.endswith(s) for s in gen.stop):
            text += _stripped_stop(text, gen.stop, choice)
        text, _ = cut_at_stop(text, gen.stop)
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=finish,
            n_prompt_tokens=usage.get("prompt_tokens"),
            n_completion_tokens=usage.get("completion_tokens"),
        )

    def _data_url(self, x: ImageLike) -> str:
        # Paths by name; PIL images by identity (the cache holds the object, so its id is not reused).
        key = ("path", str(x)) if isinstance(x, (str, os.PathLike)) else ("obj", id(x))
        with self._lock:
            hit = self._urls.get(key)
            if hit is not None:
                self._urls.move_to_end(key)
                return hit[1]
        url = png_data_url(load_image(x))
        with self._lock:
            self._urls[key] = (x, url)
            while len(self._urls) > 512:
                self._urls.popitem(last=False)
        return url

    def _detect_vllm(self) -> bool:
        try:
            r = self.client.get(f"{self.base_url}/models")
            r.raise_for_status()
            return any(m.get("owned_by") == "vllm" for m in r.json().get("data", []))
        except Exception as e:
            log.info("could not query %s/models (%s): treating the server as plain OpenAI", self.base_url, e)
            return False


def _message_text(msg: dict[str, Any]) -> str:
    """The assistant text, with anything a server-side parser split off put back in place."""
    text = msg.get("content") or ""
    if isinstance(text, list):  # some servers answer with content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning and "<think>" not in text:
        text = f"<think>\n{reasoning.strip()}\n</think>\n\n{text.lstrip()}"
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        with contextlib.suppress(json.JSONDecodeError):  # keep a malformed string as it came
            args = json.loads(args) if isinstance(args, str) else args
        payload = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
        text += f"<tool_call>\n{payload}\n</tool_call>"
    return text


def _stripped_stop(text: str, stop: list[str], choice: dict[str, Any]) -> str:
    """The stop string a server removed from the end of ``text`` ('' if it cannot be known)."""
    for key in ("stop_reason", "matched_stop"):  # vLLM, SGLang
        if key not in choice:
            continue
        # The stop string that matched; None or a token id: the model ended its turn, nothing was cut.
        reason = choice[key]
        return reason if isinstance(reason, str) and reason in stop else ""
    # No stop_reason (plain OpenAI): a closing tag whose opening tag the text leaves open was the stop.
    best, where = "", -1
    for s in stop:
        if s.startswith("</") and s.endswith(">"):
            opener = "<" + s[2:]
            i = text.rfind(opener)
            if i > where and text.find(s, i) < 0:
                best, where = s, i
    return best
