"""A chat-completions server on 127.0.0.1 that misbehaves on purpose, for testing engines and resumes.

Each ``POST .../chat/completions`` is answered according to the server's current ``mode``:

* ``healthy``: HTTP 200 with an OpenAI chat-completions response whose text comes from ``script``;
* ``http500``: HTTP 500 with a JSON error;
* ``hang``: reads the request and never answers (until the client gives up or the server stops);
* ``drip``: a healthy response sent one byte every ``drip_interval`` seconds, status line included;
* ``close``: reads the request and closes the connection without a byte;
* ``invalid_json``: HTTP 200 whose body is not JSON;
* ``surrogate``: HTTP 200, valid JSON whose text holds the escape of a lone surrogate (``\\ud800``).

``reply(body, n)``, when given, decides instead: it returns ``(status, payload)``, or ``(mode, None)``
for one of the modes above. ``GET .../models`` always answers (``owned_by`` tells vLLM apart).

Nothing here waits without a bound: slow modes stop as soon as the server stops, and the server stops
itself after ``lifetime`` seconds. Use it as a context manager.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("healthy", "http500", "hang", "drip", "close", "invalid_json", "surrogate")
# A turn the v-retrver parser reads as a complete answer (the first two candidates swapped).
DEFAULT_TEXT = "<think>the second one fits better</think><answer>[2, 1]</answer>"
Script = Callable[[dict[str, Any], int], str]
Reply = Callable[[dict[str, Any], int], tuple[Any, Any]]


def chat_response(text: str, finish: str = "stop", **choice_extra: Any) -> dict[str, Any]:
    """An OpenAI chat-completions response with one choice."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        **choice_extra,
    }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [choice],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
    }


def user_text(body: dict[str, Any]) -> str:
    """All user text of a request, for replies that depend on the conversation."""
    return "".join(
        p.get("text", "") if isinstance(p, dict) else ""
        for m in body.get("messages", [])
        if m.get("role") == "user"
        for p in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}])
    )


def _http(status: int, data: bytes, reason: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason or 'Status'}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


class FaultServer:
    """Start on construction; ``base_url`` ends in ``/v1``; ``requests`` lists (mode, body) per POST."""

    def __init__(
        self,
        mode: str = "healthy",
        script: Script | None = None,
        reply: Reply | None = None,
        owned_by: str = "someone",
        drip_interval: float = 0.5,
        lifetime: float = 120.0,
    ):
        self.mode = mode
        self.script = script
        self.reply = reply
        self.owned_by = owned_by
        self.drip_interval = drip_interval
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._closed = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    # ------------------------------------------------------------------ what to answer

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [b for _, b in self.requests]

    def count(self, mode: str | None = None) -> int:
        """POSTs received so far (in ``mode`` only, if given)."""
        with self.lock:
            return sum(1 for m, _ in self.requests if mode is None or m == mode)

    def _text(self, body: dict[str, Any], n: int) -> str:
        return self.script(body, n) if self.script else DEFAULT_TEXT

    def _answer(self, body: dict[str, Any]) -> tuple[str, bytes | None]:
        """(mode, raw HTTP response or None for no answer), recording the request."""
        with self.lock:
            mode = self.mode
            n = len(self.requests) + 1
            custom = self.reply(body, n) if self.reply else None
            if custom is not None and custom[0] in MODES:
                mode, custom = custom[0], None
            self.requests.append((mode if custom is None else f"reply:{custom[0]}", body))
        if custom is not None:
            status, payload = custom
            return "reply", _http(status, json.dumps(payload).encode())
        if mode == "healthy" or mode == "drip":
            return mode, _http(200, json.dumps(chat_response(self._text(body, n))).encode(), "OK")
        if mode == "http500":
            return mode, _http(500, b'{"error": {"message": "internal error (on purpose)"}}', "Error")
        if mode == "invalid_json":
            return mode, _http(200, b'{"choices": [{"message": ', "OK")
        if mode == "surrogate":
            # json.dumps writes the lone surrogate as the six-character escape \ud800: valid JSON text.
            text = "<think>odd \ud800 byte</think><answer>[2, 1]</answer>"
            return mode, _http(200, json.dumps(chat_response(text)).encode(), "OK")
        if mode in ("hang", "close"):
            return mode, None
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    data = {"object": "list", "data": [{"id": "m", "owned_by": server.owned_by}]}
                    self.wfile.write(_http(200, json.dumps(data).encode(), "OK"))
                else:
                    self.wfile.write(_http(404, b'{"error": "not found"}', "Not Found"))
                self.close_connection = True

            def do_POST(self) -> None:
                self.close_connection = True
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                mode, raw = server._answer(body)
                try:
                    if mode == "hang":
                        server.stopping.wait()
                    elif mode == "drip":
                        for i in range(len(raw or b"")):
                            if server.stopping.wait(server.drip_interval):
                                return
                            self.wfile.write(raw[i : i + 1])
                            self.wfile.flush()
                    elif raw is not None:
                        self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: that is what the slow modes are for

        return Handler

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
        self.stopping.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
