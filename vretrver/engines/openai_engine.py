"""Any OpenAI-compatible chat server: ``vllm serve``, SGLang, or a hosted teacher model.

Each conversation is one ``POST {base_url}/chat/completions``; a round's conversations go out concurrently
(asyncio, on an event loop in a thread of its own). Images travel as lossless PNG data URLs, in the order
of their parts. Transient failures (connection errors, timeouts, HTTP 408 / 409 / 429 / 5xx, a response
that is not JSON) are retried with exponential back-off; a conversation that still fails gets
``Completion(error=...)`` and the others carry on.

Deadlines are totals, not per read: ``timeout`` bounds one request from connecting to the last byte of
the answer, so a server that trickles bytes cannot hold a request longer; ``round_timeout`` (optional)
bounds a whole round, retries included. Without it a round lasts at most about
``(max_retries + 1) * timeout`` plus the back-off waits.

For continuous scheduling (:mod:`vretrver.scheduler`), :meth:`OpenAIEngine.turn_stream` sends each turn
as its own request as soon as it is ready (at most ``concurrency`` at once) and hands each answer back as
it arrives; ``round_timeout`` does not apply there (there are no rounds), ``timeout`` still does.

OpenAI's API drops the stop string that ended a completion, but the parser needs the closing tag. On a
vLLM server (detected from ``/models``) the request asks for it to be kept (``include_stop_str_in_output``);
otherwise it is put back (:mod:`vretrver.engines.openai_wire`). Start vLLM without ``--reasoning-parser``
so ``<think>`` stays in the text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, TypeVar

from vretrver.engines.base import Completion, EngineError, GenerationConfig, retry_async
from vretrver.engines.openai_wire import FatalResponse, chat_messages, completion_from, encode_body
from vretrver.engines.render import png_data_url
from vretrver.protocol import Conversation, ImageLike
from vretrver.tools import ToolConfig, load_image

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_JSON = {"Content-Type": "application/json"}
T = TypeVar("T")


class _Retryable(Exception):
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
        round_timeout: float | None = None,
    ):
        """``vllm=None`` asks the server's ``/models`` once; ``extra_body`` is merged into every request.

        ``timeout``: seconds one request may take in all (then it is retried, ``max_retries`` times);
        ``round_timeout``: seconds one round may take in all, after which the conversations still
        waiting fail (None: no bound beyond the requests' own).
        """
        if concurrency < 1:
            raise ValueError(f"OpenAIEngine: concurrency must be >= 1, got {concurrency}")
        for name, value in (("timeout", timeout), ("round_timeout", round_timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"OpenAIEngine: {name} must be > 0 seconds, got {value}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.round_timeout = round_timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        if tool_config is not None:
            self.tool_config = tool_config
        elif processor_path is not None:
            from transformers import AutoProcessor

            self.tool_config = ToolConfig.from_processor(AutoProcessor.from_pretrained(processor_path))
        else:
            self.tool_config = ToolConfig()
        self._vllm = vllm
        self._detect_lock = threading.Lock()
        self._lock = threading.Lock()  # the image cache and the loop
        # Query and candidate images go out again every round: encode each once.
        self._urls: OrderedDict[Any, tuple[ImageLike, str]] = OrderedDict()
        # The event loop (in its own thread) and its HTTP client, started on first use.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None

    # ------------------------------------------------------------------ public

    @property
    def is_vllm(self) -> bool:
        with self._detect_lock:
            if self._vllm is None:
                self._vllm = self._detect_vllm()
            return self._vllm

    def messages(self, conv: Conversation) -> list[dict[str, Any]]:
        """The conversation in the OpenAI chat shape: image parts become data URLs, in order."""
        return chat_messages(conv, self._data_url)

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
        data = self._run(self._post(encode_body(body)))
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
        _ = self.is_vllm  # detect once, before the requests start
        return self._run(self._round(conversations, gen))

    def turn_stream(self, max_inflight: int) -> _OpenAITurns:
        """Each turn is one request sent at once; answers come back as they arrive."""
        _ = self.is_vllm  # detect once, before the requests start
        return _OpenAITurns(self)

    def close(self) -> None:
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = None
        if loop is None:
            return
        with contextlib.suppress(Exception):  # closing must not fail on a broken connection
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    # ------------------------------------------------------------------ internals

    def _started(self) -> tuple[asyncio.AbstractEventLoop, Any]:
        import httpx

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="openai-engine", daemon=True)
                thread.start()
                # The per-read timeout of httpx as well: the deadline below is the one that counts.
                self._client = httpx.AsyncClient(
                    timeout=self.timeout,
                    headers=self.headers,
                    limits=httpx.Limits(
                        max_connections=self.concurrency, max_keepalive_connections=self.concurrency
                    ),
                )
                self._loop, self._thread = loop, thread
            return self._loop, self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and wait for it (Ctrl-C cancels it)."""
        loop, _ = self._started()
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def _round(self, conversations: list[Conversation], gen: GenerationConfig) -> list[Completion]:
        gate = asyncio.Semaphore(self.concurrency)
        tasks = [asyncio.create_task(self._one(c, gen, gate)) for c in conversations]
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.round_timeout)
        finally:
            for t in tasks:
                t.cancel()  # no-op for those done
            await asyncio.gather(*tasks, return_exceptions=True)
        late = f"round deadline: no answer within {self.round_timeout} s"
        return [t.result() if t in done else Completion(None, error=late) for t in tasks]

    async def _one(self, conv: Conversation, gen: GenerationConfig, gate: asyncio.Semaphore) -> Completion:
        async with gate:  # bodies (with their images) are built only as requests can go out
            try:
                payload = await asyncio.to_thread(lambda: encode_body(self.request_body(conv, gen)))
            except Exception as e:
                return Completion(None, error=f"could not prepare the conversation: {e}")
            try:
                data = await self._post(payload)
                return completion_from(data, gen)
            except (_Retryable, FatalResponse) as e:
                return Completion(None, error=str(e))
            except Exception as e:  # an odd response must not stop the round
                return Completion(None, error=f"bad response: {type(e).__name__}: {e}")

    async def _post(self, payload: bytes) -> dict[str, Any]:
        import httpx

        client = self._client  # coroutines run through _run, which started it
        url = f"{self.base_url}/chat/completions"
        tries = self.max_retries + 1

        async def once() -> dict[str, Any]:
            try:
                async with asyncio.timeout(self.timeout):
                    r = await client.post(url, content=payload, headers=_JSON)
            except (TimeoutError, httpx.TimeoutException) as e:
                raise _Retryable(
                    f"timed out after {tries} tries (no complete answer within {self.timeout:g} s; "
                    f"{type(e).__name__})"
                ) from e
            except httpx.TransportError as e:
                raise _Retryable(f"connection failed after {tries} tries: {type(e).__name__}: {e}") from e
            if r.status_code in RETRY_STATUS:
                raise _Retryable(f"HTTP {r.status_code} after {tries} tries: {r.text[:300]}")
            if r.status_code >= 400:
                raise FatalResponse(f"HTTP {r.status_code}: {r.text[:500]}")
            try:
                return r.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise _Retryable(f"invalid JSON in the response after {tries} tries: {r.text[:200]!r}") from e

        return await retry_async(once, attempts=tries, backoff=self.backoff, retry_on=(_Retryable,))

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
        async def models() -> Any:
            async with asyncio.timeout(self.timeout):
                r = await self._client.get(f"{self.base_url}/models")
            r.raise_for_status()
            return r.json()

        try:
            data = self._run(models())
            return any(m.get("owned_by") == "vllm" for m in data.get("data", []))
        except Exception as e:
            log.info("could not query %s/models (%s): treating the server as plain OpenAI", self.base_url, e)
            return False


class _OpenAITurns:
    """A :class:`vretrver.scheduler.TurnStream` of concurrent requests on the engine's event loop."""

    def __init__(self, engine: OpenAIEngine):
        self.engine = engine
        self.loop, _ = engine._started()
        # Created here, bound to the engine's loop on first use there.
        self.gate = asyncio.Semaphore(engine.concurrency)
        self.futures: dict[concurrent.futures.Future[Completion], int] = {}

    def submit(self, key: int, conv: Conversation, gen: GenerationConfig) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.engine._one(conv, gen, self.gate), self.loop)
        self.futures[fut] = key

    def wait(self) -> list[tuple[int, Completion]]:
        if not self.futures:
            return []
        done, _ = concurrent.futures.wait(list(self.futures), return_when=concurrent.futures.FIRST_COMPLETED)
        out = []
        for fut in done:
            key = self.futures.pop(fut)
            try:
                out.append((key, fut.result()))
            except Exception as e:  # _one turns failures into completions; anything else fails this turn
                out.append((key, Completion(None, error=f"bad response: {type(e).__name__}: {e}")))
        return out

    def close(self) -> None:
        for fut in self.futures:
            fut.cancel()
        self.futures = {}
