"""The OpenAI-compatible engine against a local HTTP server: request shape, retries, failures, deadlines.

The server (:mod:`vretrver.testing.http_faults`) answers on real sockets and misbehaves on purpose:
HTTP 500, no answer, one byte at a time, a closed connection, a body that is not JSON.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vretrver.engines import GenerationConfig, make_engine
from vretrver.engines.openai_engine import OpenAIEngine
from vretrver.episode import Episode
from vretrver.protocol import build_conversation
from vretrver.rerank import run_episodes
from vretrver.samples import Candidate, Query, Sample
from vretrver.testing.http_faults import FaultServer, chat_response, user_text
from vretrver.tools import ToolConfig

SELECT_CALL = '<think>look</think><tool_call>{"name": "select_images", "arguments": {"target_images": [0, 2]}}</tool_call>'


@pytest.fixture
def serve() -> Iterator[Callable[..., FaultServer]]:
    servers: list[FaultServer] = []

    def start(reply: Callable[[dict[str, Any], int], tuple[Any, Any]], **kw: Any) -> FaultServer:
        servers.append(FaultServer(reply=reply, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def samples(sample_photos: dict[str, Path]) -> list[Sample]:
    p = sample_photos
    return [
        Sample(
            id=f"q{i}",
            query=Query(text=text, images=[str(p[q])]),
            candidates=[
                Candidate(id=f"q{i}c{j}", text=f"cand {j}", image=str(p[c])) for j, c in enumerate(cands)
            ],
        )
        for i, (text, q, cands) in enumerate(
            [
                ("a cat", "chelsea", ["coffee", "astronaut", "camera"]),
                ("a rocket", "rocket", ["motorcycle", "chelsea"]),
                ("SLOW a cup", "coffee", ["rocket", "camera", "chelsea"]),
            ]
        )
    ]


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def test_messages_keep_part_order_and_exact_pixels(
    samples: list[Sample], sample_photos: dict[str, Path]
) -> None:
    eng = OpenAIEngine("http://127.0.0.1:9/v1", "m", vllm=False)
    ep = Episode(samples[0], tool_config=eng.tool_config)
    ep.step(SELECT_CALL)  # a tool observation with 2 PIL images
    conv = ep.conversation
    msgs = eng.messages(conv)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert isinstance(msgs[0]["content"], str) and msgs[2]["content"] == SELECT_CALL
    urls = [
        p["image_url"]["url"]
        for m in msgs
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]
    assert len(urls) == len(conv.images) == 4 + 2
    # text parts keep their place around the images
    first = msgs[1]["content"]
    assert first[0]["type"] == "text" and first[0]["text"].rstrip().endswith("Query:")
    assert first[1]["type"] == "image_url"
    # lossless: the server decodes exactly the pixels a local engine would read
    cam = np.asarray(Image.open(sample_photos["camera"]).convert("RGB"))
    assert np.array_equal(np.asarray(decode_data_url(urls[3])), cam)
    assert np.array_equal(np.asarray(decode_data_url(urls[5])), np.asarray(conv.images[5]))
    eng.close()


def test_retries_503_then_answers(serve: Callable[..., FaultServer], samples: list[Sample]) -> None:
    # The first three requests fail; each conversation's own retries absorb that.
    srv = serve(
        lambda body, n: (
            (503, {"error": "busy"}) if n <= 3 else (200, chat_response("<think>x</think><answer>[2, 1]"))
        )
    )
    eng = OpenAIEngine(srv.base_url, "m", max_retries=4, backoff=0.01, concurrency=1)
    episodes = run_episodes(samples[:2], eng, gen=GenerationConfig(max_new_tokens=32))
    assert len(srv.bodies) == 3 + 2
    for ep in episodes:
        assert ep.failed is None and ep.end_reason == "answer"
        # plain OpenAI strips the stop string: the engine put "</answer>" back, the parser saw a full answer
        assert ep.turns[0].text == "<think>x</think><answer>[2, 1]</answer>"
        assert ep.ranking[:2] == [2, 1]
    body = srv.bodies[-1]
    assert body["model"] == "m" and body["stop"] == ["</tool_call>", "</answer>"] and body["max_tokens"] == 32
    assert "include_stop_str_in_output" not in body  # not a vLLM server
    eng.close()


def test_gives_up_after_max_retries_and_only_that_conversation_fails(
    serve: Callable[..., FaultServer], samples: list[Sample]
) -> None:
    def reply(body: dict[str, Any], n: int) -> tuple[Any, Any]:
        if "a rocket" in user_text(body):
            return 500, {"error": "boom"}
        return 200, chat_response("<think>x</think><answer>[1]")

    srv = serve(reply)
    eng = OpenAIEngine(srv.base_url, "m", max_retries=2, backoff=0.01)
    outs = eng.continue_conversations([build_conversation(s) for s in samples[:2]], GenerationConfig())
    assert outs[0].error is None and outs[0].text.endswith("</answer>")
    assert outs[1].text is None and "HTTP 500 after 3 tries" in outs[1].error
    assert sum("a rocket" in user_text(b) for b in srv.bodies) == 3
    eng.close()


def test_client_errors_are_not_retried(serve: Callable[..., FaultServer], samples: list[Sample]) -> None:
    srv = serve(lambda body, n: (400, {"error": "prompt too long"}))
    eng = OpenAIEngine(srv.base_url, "m", max_retries=4, backoff=0.01)
    out = eng.continue_conversations([build_conversation(samples[0])], GenerationConfig())[0]
    assert "HTTP 400" in out.error and "prompt too long" in out.error
    assert len(srv.bodies) == 1
    eng.close()


def test_a_request_that_always_times_out_fails_only_its_episode(
    serve: Callable[..., FaultServer], samples: list[Sample]
) -> None:
    def reply(body: dict[str, Any], n: int) -> tuple[Any, Any]:
        if "SLOW" in user_text(body):
            return "hang", None
        return 200, chat_response("<think>x</think><answer>[1, 2]")

    srv = serve(reply)
    eng = OpenAIEngine(srv.base_url, "m", timeout=0.4, max_retries=1, backoff=0.01)
    episodes = run_episodes(samples, eng, gen=GenerationConfig())
    by_id = {e.sample.id: e for e in episodes}
    assert "timed out after 2 tries" in by_id["q2"].failed
    assert by_id["q2"].ranking == [1, 2, 3]  # prior order
    for sid in ("q0", "q1"):
        assert by_id[sid].failed is None and by_id[sid].answered
    assert sum("SLOW" in user_text(b) for b in srv.bodies) == 2
    eng.close()


def test_vllm_server_gets_vllm_fields_and_stop_reason_is_used(
    serve: Callable[..., FaultServer], samples: list[Sample]
) -> None:
    def reply(body: dict[str, Any], n: int) -> tuple[Any, Any]:
        if n == 1:  # vLLM reports which stop string matched (here as if it had stripped it anyway)
            return 200, chat_response("<think>a</think><tool_call>{}", stop_reason="</tool_call>")
        # the model ended its turn with its end-of-turn token: nothing to put back
        return 200, chat_response("<think>b</think><answer>[1", stop_reason=None)

    srv = serve(reply, owned_by="vllm")
    eng = OpenAIEngine(srv.base_url, "m", concurrency=1, extra_body={"top_k": 5})
    assert eng.is_vllm
    outs = eng.continue_conversations([build_conversation(s) for s in samples[:2]], GenerationConfig(seed=3))
    assert outs[0].text == "<think>a</think><tool_call>{}</tool_call>"
    assert outs[1].text == "<think>b</think><answer>[1"
    body = srv.bodies[0]
    assert body["include_stop_str_in_output"] is True and body["skip_special_tokens"] is True
    assert body["seed"] == 3 and body["top_k"] == 5  # extra_body wins
    assert outs[0].n_prompt_tokens == 11 and outs[0].n_completion_tokens == 7
    eng.close()


def test_tool_config_and_factory(tiny_qwen3vl: Path) -> None:
    assert OpenAIEngine("http://x/v1", "m").tool_config == ToolConfig()
    eng = make_engine("openai", "m", base_url="http://x/v1", processor_path=str(tiny_qwen3vl), concurrency=4)
    assert isinstance(eng, OpenAIEngine) and eng.concurrency == 4
    assert eng.tool_config.coordinates == "qwen3-vl" and eng.tool_config.factor == 32
    with pytest.raises(ValueError, match="base_url"):
        make_engine("openai", "m")


def test_an_unreadable_image_fails_before_any_request(
    serve: Callable[..., FaultServer], samples: list[Sample], tmp_path: Path
) -> None:
    srv = serve(lambda body, n: (200, chat_response("<think>x</think><answer>[1]")))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = Sample(
        id="bad", query=Query(text="q", images=[str(broken)]), candidates=[Candidate(id="c", text="t")]
    )
    eng = OpenAIEngine(srv.base_url, "m", max_retries=3, backoff=0.01)
    outs = eng.continue_conversations(
        [build_conversation(bad), build_conversation(samples[0])], GenerationConfig()
    )
    assert outs[0].text is None and "image 0" in outs[0].error and "could not be read" in outs[0].error
    assert outs[1].error is None
    assert len(srv.bodies) == 1
    eng.close()


# --------------------------------------------------------------------------- faults and deadlines


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("http500", "HTTP 500 after 2 tries"),
        ("hang", "timed out after 2 tries (no complete answer within 0.5 s"),
        ("drip", "timed out after 2 tries (no complete answer within 0.5 s"),
        ("close", "connection failed after 2 tries"),
        ("invalid_json", "invalid JSON in the response after 2 tries"),
    ],
)
def test_each_fault_fails_only_its_conversation_within_the_deadline(
    serve: Callable[..., FaultServer], samples: list[Sample], mode: str, expected: str
) -> None:
    def reply(body: dict[str, Any], n: int) -> tuple[Any, Any]:
        if "a rocket" in user_text(body):
            return mode, None
        return 200, chat_response("<think>x</think><answer>[1]")

    srv = serve(reply, drip_interval=0.1, lifetime=30)
    eng = OpenAIEngine(srv.base_url, "m", timeout=0.5, max_retries=1, backoff=0.01, vllm=False)
    t = time.monotonic()
    outs = eng.continue_conversations([build_conversation(s) for s in samples[:2]], GenerationConfig())
    held = time.monotonic() - t
    assert outs[0].error is None and outs[0].text == "<think>x</think><answer>[1]</answer>"
    assert outs[1].text is None and expected in outs[1].error
    assert srv.count(mode) == 2  # the first try and one retry
    assert held < 2 * 0.5 + 1.0  # two tries of at most 0.5 s each, plus slack
    eng.close()


def test_a_trickling_server_cannot_hold_a_request_past_its_total_deadline(
    serve: Callable[..., FaultServer], samples: list[Sample]
) -> None:
    # A whole answer sent one byte every 0.5 s takes minutes; each byte arrives well within any
    # per-read timeout. The deadline is the request's total: 2 s. (The server stops itself after 10 s.)
    srv = serve(lambda body, n: ("drip", None), drip_interval=0.5, lifetime=10)
    eng = OpenAIEngine(srv.base_url, "m", timeout=2, max_retries=0, vllm=False)
    t = time.monotonic()
    out = eng.continue_conversations([build_conversation(samples[0])], GenerationConfig())[0]
    held = time.monotonic() - t
    assert out.text is None and "no complete answer within 2 s" in out.error
    assert 2 <= held < 3.5
    eng.close()


def test_the_round_deadline_fails_what_is_still_waiting(
    serve: Callable[..., FaultServer], samples: list[Sample]
) -> None:
    def reply(body: dict[str, Any], n: int) -> tuple[Any, Any]:
        if "SLOW" in user_text(body):
            return "hang", None
        return 200, chat_response("<think>x</think><answer>[2, 1]")

    srv = serve(reply, lifetime=30)
    eng = OpenAIEngine(srv.base_url, "m", timeout=20, round_timeout=1.0, max_retries=3, vllm=False)
    t = time.monotonic()
    episodes = run_episodes(samples, eng, gen=GenerationConfig())
    held = time.monotonic() - t
    by_id = {e.sample.id: e for e in episodes}
    assert by_id["q2"].failed == "round deadline: no answer within 1.0 s"
    assert by_id["q2"].ranking == [1, 2, 3]  # its episode failed: prior order
    assert by_id["q0"].answered and by_id["q1"].answered
    assert 1.0 <= held < 2.5
    eng.close()


def test_bad_deadlines_are_rejected() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        OpenAIEngine("http://x/v1", "m", timeout=0)
    with pytest.raises(ValueError, match="round_timeout must be > 0"):
        OpenAIEngine("http://x/v1", "m", round_timeout=-1)
