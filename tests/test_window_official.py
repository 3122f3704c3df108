"""``--window-mode official``: the sliding window of the public release, compared with a restatement.

The restatement below follows ``sliding_window_processor.py`` of the release (our own code, same rules):
windows start at 30, 20, 10, 0 (size 20) whatever the list length; a window starting past the end of the
list is shown unchanged and one running past it is shown shortened, and in both cases the answer is not
applied (``window_start + window_size > len(hits)``); an answer is read from the first
``<answer>[...]</answer>`` of the response, its items parsed as integers (others skipped), made 0-based,
de-duplicated, kept if inside the window, the missing positions appended in ascending order; no bracketed
list leaves the window as it was.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_evaluate import SwapEngine, lines, mbeir, swap_cfg  # noqa: F401
from test_sliding_window import candidate_ids, make_sample

from vretrver.cli import build_parser
from vretrver.engines.base import Completion, GenerationConfig
from vretrver.evaluate import EvalConfig, evaluate
from vretrver.protocol import Conversation
from vretrver.rerank import (
    RerankConfig,
    official_window_applies,
    official_window_order,
    official_window_starts,
    rerank_windows,
)
from vretrver.tools import ToolConfig

# --------------------------------------------------------------------------- the official rules, restated


def restated_update(hits: list[str], response: str, start: int, size: int = 20) -> list[str]:
    """What the release does with one window's response (``update_hit_ranking_from_window_results``)."""
    m = re.search(r"<answer>\s*\[([^\]]+)\]\s*</answer>", response)
    if m is None:
        return hits
    picked = []
    for piece in m.group(1).split(","):
        with contextlib.suppress(ValueError):
            picked.append(int(piece.strip()) - 1)
    if not picked:
        picked = list(range(size))
    picked = list(dict.fromkeys(picked))
    valid = [i for i in picked if 0 <= i < size] or list(range(size))
    valid += sorted(set(range(size)) - set(valid))
    order = valid[:size]
    if start + size > len(hits):
        return hits
    window = hits[start : start + size]
    return hits[:start] + [window[i] for i in order] + hits[start + size :]


def restated_driver(hits: list[str], respond: Callable[[list[str]], str], size: int = 20) -> list[str]:
    """The release's four passes; ``respond`` answers the candidates a window shows."""
    for start in (30, 20, 10, 0):
        shown = hits if start >= len(hits) else hits[start : min(start + size, len(hits))]
        hits = restated_update(hits, respond(shown), start, size)
    return hits


class TextEngine:
    """Answers each conversation with ``respond(candidate ids in shown order)``."""

    name = "text"

    def __init__(self, respond: Callable[[list[str]], str]):
        self.tool_config = ToolConfig()
        self.respond = respond
        self.seen: list[list[str]] = []

    def continue_conversations(
        self, conversations: list[Conversation], gen: GenerationConfig
    ) -> list[Completion]:
        outs = []
        for conv in conversations:
            ids = candidate_ids(conv)
            self.seen.append(ids)
            outs.append(Completion(self.respond(ids), finish_reason="stop"))
        return outs

    def close(self) -> None:
        pass


def by_score(score: dict[str, float]) -> Callable[[list[str]], str]:
    def respond(ids: list[str]) -> str:
        numbers = sorted(range(1, len(ids) + 1), key=lambda n: -score[ids[n - 1]])
        return f"<think>ranked</think><answer>{numbers}</answer>"

    return respond


OFFICIAL = RerankConfig(window_mode="official")


# --------------------------------------------------------------------------- tests


def test_official_window_starts_and_when_a_window_applies():
    assert official_window_starts() == [30, 20, 10, 0]
    assert official_window_starts(20, 20, 10) == [0]  # the release's top-20 driver: one window
    assert official_window_starts(50, 20, 10) == official_window_starts(50)
    assert [s for s in official_window_starts() if official_window_applies(s, 20, 35)] == [10, 0]
    assert [s for s in official_window_starts() if official_window_applies(s, 20, 19)] == []
    assert [s for s in official_window_starts() if official_window_applies(s, 20, 50)] == [30, 20, 10, 0]


@pytest.mark.parametrize("n", [5, 15, 19, 20, 25, 35, 40, 49, 50, 60])
def test_short_and_long_lists_match_the_restated_driver(n):
    sample = make_sample(n)
    ids = [c.id for c in sample.candidates]
    rng = random.Random(n)
    score = {cid: rng.random() for cid in ids}
    engine = TextEngine(by_score(score))
    (res,) = rerank_windows([sample], engine, OFFICIAL)
    assert res.ranked_ids == restated_driver(ids[:50], by_score(score)) + ids[50:]
    # Only the windows the release applies are run, back to front, each a full 20.
    starts = [s for s in (30, 20, 10, 0) if s + 20 <= n]
    assert [ep.sample.meta["window_start"] for ep in res.episodes] == starts
    assert all(len(w) == 20 for w in engine.seen) and res.applied == [True] * len(starts)


def test_short_lists_differ_from_our_mode():
    sample = make_sample(35)
    ids = [c.id for c in sample.candidates]
    score = {cid: float(i) for i, cid in enumerate(ids)}  # the last is best
    (official,) = rerank_windows([sample], TextEngine(by_score(score)), OFFICIAL)
    (ours,) = rerank_windows([sample], TextEngine(by_score(score)))
    # Ours covers all 35 (windows 15, 5, 0): the best candidate reaches the top. The release never shows
    # positions 30-34 in an applied window: they stay where they are.
    assert ours.ranked_ids[0] == "doc-34"
    assert official.ranked_ids[30:] == ids[30:] and official.ranked_ids[0] == "doc-29"


ANSWERS = [
    "<answer>3</answer>",  # a single number, no brackets: nothing moves
    "<think>no answer at all</think>",
    "<answer>[]</answer>",
    "<answer>[ ]</answer>",
    "<answer>[a, b]</answer>",
    "<answer>[3, 3, 25, x, 1, 0, -2]</answer>",
    "<answer>[ 20 ,19,  18 ]</answer>",
    "<answer>\n[2, 1]\n</answer>",
    "<think>first <answer>[2, 1]</answer> then</think><answer>[1, 2]</answer>",  # the first one counts
    "<answer>[2, 1]",  # not closed: no match
    "<answer>(2, 1)</answer>",
]


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("n", [25, 50])
def test_answers_are_read_as_the_release_reads_them(answer, n):
    sample = make_sample(n)
    ids = [c.id for c in sample.candidates]
    (res,) = rerank_windows([sample], TextEngine(lambda _: answer), OFFICIAL)
    assert res.ranked_ids == restated_driver(ids, lambda _: answer)
    moved = restated_update(ids, answer, 0) != ids
    assert res.applied == [moved] * len(res.episodes)


def test_window_order_on_random_answers():
    rng = random.Random(7)
    pieces = ["1", "2", "3", "20", "21", "0", "-1", "x", " 4 ", "2.5", "", "07", "+5"]
    for _ in range(500):
        items = ",".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        response = rng.choice(["", "<think>t</think>"]) + f"<answer>[{items}]</answer>"
        hits = [f"h{i}" for i in range(20)]
        want = restated_update(hits, response, 0)
        order = official_window_order(response, 20)
        got = hits if order is None else [hits[i] for i in order]
        assert got == want, response


def test_eval_window_mode_reaches_the_reranking_and_the_result_folder(mbeir, tmp_path):  # noqa: F811
    src = tmp_path / "c.jsonl"
    # Four candidates each; top-5, window 3, stride 2. Ours: windows 1-3 then 0-2. Official: windows
    # 2-4 (runs past the end: not applied) and 0-2.
    src.write_text(
        "".join(
            json.dumps({"qid": q, "ranked": ["9:104", "9:105", "9:106", "9:107"]}) + "\n"
            for q in ("9:1", "9:2", "9:3", "9:5", "9:6")
        )
    )
    ours_cfg, official_cfg = swap_cfg(mbeir, src), swap_cfg(mbeir, src, window_mode="official")
    assert ours_cfg.fingerprint() != official_cfg.fingerprint()
    out_a, _ = evaluate(ours_cfg, tmp_path / "res", progress=False, engine=SwapEngine())
    out_b, _ = evaluate(official_cfg, tmp_path / "res", progress=False, engine=SwapEngine())
    assert out_b == tmp_path / f"res-{official_cfg.fingerprint()}"
    a, b, c, d = "9:104", "9:105", "9:106", "9:107"
    ours = lines(Path(out_a) / "results" / "mscoco_task0.jsonl")[0]
    official = lines(Path(out_b) / "results" / "mscoco_task0.jsonl")[0]
    assert ours["reranked"] == [c, a, b, d] and ours["window_applied"] == [True, True]
    assert official["reranked"] == [b, a, c, d] and official["window_applied"] == [True]
    assert json.loads((Path(out_b) / "config.json").read_text())["window_mode"] == "official"
    trajs = lines(Path(out_b) / "trajectories" / "mscoco_task0.jsonl")
    assert [(t["window_start"], t["window_applied"]) for t in trajs[:1]] == [(0, True)] and len(trajs) == 5


def test_cli_options_and_fingerprints():
    ns = build_parser().parse_args(
        ["eval", "--benchmark", "mbeir", "--out", "x", "--window-mode", "official", "--max-unresolved", "3"]
    )
    assert (ns.window_mode, ns.max_unresolved, ns.parquet_prompts) == ("official", 3, False)
    plain = EvalConfig(benchmark="mbeir", reranker="m")
    # At their defaults the new settings leave the fingerprint of earlier result folders as it was
    # (this value was computed before they existed).
    assert EvalConfig(benchmark="mbeir", reranker="m", window=10).fingerprint() == "b7b059a55f"
    # The loss allowance is not a result setting; first-stage-only runs ignore the window mode.
    assert plain.fingerprint() == EvalConfig(benchmark="mbeir", reranker="m", max_unresolved=9).fingerprint()
    assert (
        plain.fingerprint() != EvalConfig(benchmark="mbeir", reranker="m", parquet_prompts=True).fingerprint()
    )
    assert (
        EvalConfig(benchmark="mbeir").fingerprint()
        == EvalConfig(benchmark="mbeir", window_mode="official").fingerprint()
    )
    with pytest.raises(ValueError, match="window-mode must be one of ours, official"):
        EvalConfig(benchmark="mbeir", window_mode="theirs").check()
    with pytest.raises(ValueError, match="max-unresolved must be >= 0"):
        EvalConfig(benchmark="mbeir", max_unresolved=-1).check()
