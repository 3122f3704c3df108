"""The sliding window over a top-N list, driven by a scripted stand-in engine that ranks by a hidden score."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest

from vretrver.engines.base import Completion, GenerationConfig
from vretrver.protocol import Conversation
from vretrver.rerank import RerankConfig, rerank_windows, run_episodes, window_starts
from vretrver.samples import Candidate, Query, Sample
from vretrver.tools import ToolConfig

CAND = re.compile(r"^\((\d+)\) (doc-\d+)$", re.M)


def candidate_ids(conv: Conversation) -> list[str]:
    """The candidate ids of a conversation, in the order numbered (1), (2), ... in the user turn."""
    text = "".join(p.get("text", "") for p in conv.messages[1]["content"])
    found = CAND.findall(text)
    assert [int(n) for n, _ in found] == list(range(1, len(found) + 1))
    return [cid for _, cid in found]


class ScriptedEngine:
    """Answers every conversation by ranking its candidates by a hidden score (best first).

    ``answer_hook`` may rewrite the ranked numbers before they are written into the answer.
    """

    name = "scripted"

    def __init__(self, score: dict[str, float], answer_hook: Callable[[list[int]], list[int]] | None = None):
        self.tool_config = ToolConfig()
        self.score = score
        self.answer_hook = answer_hook
        self.seen: list[list[str]] = []  # candidate ids of every conversation, in call order
        self.batches: list[int] = []

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        self.batches.append(len(conversations))
        outs = []
        for conv in conversations:
            ids = candidate_ids(conv)
            self.seen.append(ids)
            numbers = sorted(range(1, len(ids) + 1), key=lambda n: -self.score[ids[n - 1]])
            if self.answer_hook:
                numbers = self.answer_hook(numbers)
            outs.append(
                Completion(
                    f"<think>ranked by score</think>\n<answer>{numbers}</answer>", finish_reason="stop"
                )
            )
        return outs

    def close(self) -> None:
        pass


def make_sample(n: int, sid: str = "q1") -> Sample:
    # Text-only candidates "doc-00", "doc-01", ... in first-stage order.
    return Sample(
        sid, Query(text=f"query {sid}"), [Candidate(f"doc-{i:02d}", text=f"doc-{i:02d}") for i in range(n)]
    )


def simulate(ids: list[str], score: dict[str, float], window: int = 20, stride: int = 10):
    """The expected outcome, computed independently: each window sorted in place, back to front."""
    order = list(ids)
    windows = []
    for start in window_starts(len(order), window, stride):
        w = order[start : start + window]
        windows.append(list(w))
        order[start : start + window] = sorted(w, key=lambda c: -score[c])
    return windows, order


def test_window_starts():
    assert window_starts(50) == [30, 20, 10, 0]
    assert window_starts(50, 20, 10) == [30, 20, 10, 0]
    assert window_starts(10) == [0]
    assert window_starts(20) == [0]
    assert window_starts(21) == [1, 0]
    assert window_starts(25) == [5, 0]
    assert window_starts(0) == [0]
    assert window_starts(100) == [80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert window_starts(45, 20, 20) == [25, 5, 0]
    # Every position is covered and consecutive windows overlap by window - stride.
    for n in range(0, 120):
        starts = window_starts(n)
        covered = set()
        for s in starts:
            covered.update(range(s, min(n, s + 20)))
        assert covered == set(range(n))
        assert starts == sorted(starts, reverse=True) and starts[-1] == 0


def test_fifty_candidates_four_windows_back_to_front():
    sample = make_sample(50)
    ids = [c.id for c in sample.candidates]
    rng = random.Random(0)
    score = {cid: rng.random() for cid in ids}
    score["doc-49"] = 10.0  # the best candidate starts last
    engine = ScriptedEngine(score)

    (res,) = rerank_windows([sample], engine)

    # The windows, 0-based: 30-49, then 20-39, 10-29, 0-19 of the list as it stands after the previous one.
    assert len(engine.seen) == 4 and engine.batches == [1, 1, 1, 1]
    assert engine.seen[0] == ids[30:50]
    expected_windows, expected_order = simulate(ids, score)
    assert engine.seen == expected_windows
    assert res.ranked_ids == expected_order
    assert sorted(res.ranked_ids) == ids
    # The best candidate bubbles from position 49 to position 0, one window at a time.
    # After each window it stands at the window's start, which is the middle (index 10) of the next window.
    assert engine.seen[0][19] == "doc-49"
    assert [w[10] for w in engine.seen[1:]] == ["doc-49"] * 3
    assert res.ranked_ids[0] == "doc-49"
    # Stride 10 carries the top ten of each window forward: the overall top ten end first, in order.
    top10 = sorted(ids, key=lambda c: -score[c])[:10]
    assert res.ranked_ids[:10] == top10
    assert res.sample_id == "q1" and len(res.episodes) == 4
    assert [ep.sample.meta["window_start"] for ep in res.episodes] == [30, 20, 10, 0]
    assert all(ep.answered and ep.k == 20 for ep in res.episodes)


def test_reverse_order_by_hand():
    # First stage got it exactly backwards: the best 10 are at positions 40-49.
    sample = make_sample(50)
    score = {c.id: float(i) for i, c in enumerate(sample.candidates)}
    (res,) = rerank_windows([sample], ScriptedEngine(score))

    # By hand: 30-49 -> [49..40, 39..30]; 20-39 -> [49..40, 29..20]; 10-29 -> [49..40, 19..10];
    # 0-19 -> [49..40, 9..0]. Only the top ten are guaranteed; each block below keeps what its last window left.
    def block(hi: int, lo: int) -> list[str]:
        return [f"doc-{i:02d}" for i in range(hi, lo - 1, -1)]

    assert res.ranked_ids == block(49, 40) + block(9, 0) + block(19, 10) + block(29, 20) + block(39, 30)


def test_ten_candidates_one_window():
    sample = make_sample(10)
    score = {c.id: -i for i, c in enumerate(sample.candidates)}
    score["doc-07"] = 5
    engine = ScriptedEngine(score)
    (res,) = rerank_windows([sample], engine)
    assert engine.seen == [[f"doc-{i:02d}" for i in range(10)]]
    assert len(res.episodes) == 1
    assert res.ranked_ids == ["doc-07"] + [f"doc-{i:02d}" for i in range(10) if i != 7]


def test_omitted_candidates_keep_their_prior_order():
    sample = make_sample(10)
    score = {c.id: float(i) for i, c in enumerate(sample.candidates)}  # doc-09 best
    # The model only lists its top three (and repeats one, and adds an out-of-range number).
    engine = ScriptedEngine(score, answer_hook=lambda nums: nums[:3] + [nums[0], 42, 0])
    (res,) = rerank_windows([sample], engine)
    assert res.ranked_ids == ["doc-09", "doc-08", "doc-07"] + [f"doc-{i:02d}" for i in range(7)]


def test_omitted_candidates_inside_overlapping_windows():
    sample = make_sample(30)  # windows 10-29 then 0-19
    ids = [c.id for c in sample.candidates]
    score = {cid: float(i) for i, cid in enumerate(ids)}
    engine = ScriptedEngine(score, answer_hook=lambda nums: nums[:2])
    (res,) = rerank_windows([sample], engine)
    # Window 10-29: doc-29, doc-28 move to 10, 11; the rest keep their order (doc-10 ... doc-27).
    after_first = ids[:10] + ["doc-29", "doc-28"] + ids[10:28]
    assert engine.seen[1] == after_first[:20]
    # Window 0-19 holds doc-00 ... doc-09, doc-29, doc-28, doc-10 ... doc-17: its top two are doc-29, doc-28.
    assert res.ranked_ids == ["doc-29", "doc-28"] + ids[:10] + ids[10:28]


def test_several_samples_share_each_round():
    samples = [make_sample(50, "a"), make_sample(25, "b"), make_sample(10, "c")]
    score = {f"doc-{i:02d}": float(-i) for i in range(50)}
    engine = ScriptedEngine(score)
    rounds = []
    results = rerank_windows(samples, engine, on_round=lambda r, n: rounds.append((r, n)))
    # Round r holds the r-th window of every sample that has one: 50 -> 4 windows, 25 -> 2, 10 -> 1.
    assert rounds == [(0, 3), (1, 2), (2, 1), (3, 1)]
    assert engine.batches == [3, 2, 1, 1]
    assert [r.sample_id for r in results] == ["a", "b", "c"]
    assert [len(r.episodes) for r in results] == [4, 2, 1]
    for s, r in zip(samples, results, strict=True):
        ids = [c.id for c in s.candidates]
        assert r.ranked_ids == simulate(ids, score)[1]


def test_batch_size_splits_engine_calls():
    samples = [make_sample(10, f"s{i}") for i in range(5)]
    score = {f"doc-{i:02d}": float(i) for i in range(10)}
    engine = ScriptedEngine(score)
    results = rerank_windows(samples, engine, RerankConfig(batch_size=2))
    assert engine.batches == [2, 2, 1]
    assert all(r.ranked_ids == [f"doc-{i:02d}" for i in range(9, -1, -1)] for r in results)


def test_top_n_and_window_settings():
    sample = make_sample(60)
    score = {c.id: float(i) for i, c in enumerate(sample.candidates)}
    engine = ScriptedEngine(score)
    (res,) = rerank_windows([sample], engine, RerankConfig(top_n=40, window=10, stride=5))
    assert [len(w) for w in engine.seen] == [10] * 7  # starts 30, 25, ..., 0
    assert engine.seen[0] == [f"doc-{i}" for i in range(30, 40)]
    # The top-N are reranked; the rest follow in their first-stage order.
    assert len(res.ranked_ids) == 60
    ids = [c.id for c in sample.candidates]
    assert res.ranked_ids[40:] == ids[40:]
    assert sorted(res.ranked_ids[:40]) == sorted(ids[:40])


class FailingEngine(ScriptedEngine):
    """Fails on the window that holds a given candidate."""

    def __init__(self, score, fail_on: str):
        super().__init__(score)
        self.fail_on = fail_on

    def continue_conversations(self, conversations, gen):
        outs = super().continue_conversations(conversations, gen)
        return [
            Completion(None, error="server error 500") if self.fail_on in candidate_ids(c) else o
            for c, o in zip(conversations, outs, strict=True)
        ]


def test_engine_failure_keeps_the_window_in_prior_order():
    sample = make_sample(30)
    ids = [c.id for c in sample.candidates]
    score = {cid: float(i) for i, cid in enumerate(ids)}
    engine = FailingEngine(score, fail_on="doc-25")  # only in the first window (10-29)
    (res,) = rerank_windows([sample], engine)
    assert res.episodes[0].failed == "server error 500"
    assert res.episodes[0].ranking == list(range(1, 21))
    # The first window stayed as it was; the second (0-19) was sorted.
    assert res.ranked_ids == sorted(ids[:20], key=lambda c: -score[c]) + ids[20:]


def test_run_episodes_with_a_tool_call_first():
    # A model that looks before answering: one tool call (invalid here, text-only candidates), then the answer.
    class LookThenAnswer(ScriptedEngine):
        def continue_conversations(self, conversations, gen):
            outs = super().continue_conversations(conversations, gen)
            return [
                o
                if len(c.messages) > 2
                else Completion(
                    '<think>look</think><tool_call>{"name": "select_images", "arguments": {"target_images": [1]}}</tool_call>'
                )
                for c, o in zip(conversations, outs, strict=True)
            ]

    samples = [make_sample(5, "x"), make_sample(3, "y")]
    score = {f"doc-{i:02d}": float(i) for i in range(5)}
    engine = LookThenAnswer(score)
    eps = run_episodes(samples, engine)
    assert engine.batches == [2, 2]  # two rounds, both episodes in each
    for ep in eps:
        assert ep.done and ep.answered and ep.n_invalid_calls == 1
        assert ep.ranking == list(range(ep.k, 0, -1))
        assert "candidate 1 has no image" in ep.turns[1].text


def test_empty_candidate_list():
    engine = ScriptedEngine({})
    (res,) = rerank_windows([make_sample(0)], engine)
    assert res.ranked_ids == [] and res.episodes == [] and engine.seen == []


@pytest.mark.parametrize("n", [1, 19, 20, 21, 37])
def test_every_length_returns_a_permutation(n):
    sample = make_sample(n)
    rng = random.Random(n)
    score = {c.id: rng.random() for c in sample.candidates}
    (res,) = rerank_windows([sample], ScriptedEngine(score))
    ids = [c.id for c in sample.candidates]
    assert sorted(res.ranked_ids) == ids
    assert res.ranked_ids == simulate(ids, score)[1]
    assert res.ranked_ids[0] == max(ids, key=lambda c: score[c])
