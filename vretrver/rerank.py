"""Drive many reranking episodes concurrently over one engine, and the sliding window over top-N lists.

Each round sends the next turn of every live episode in ONE engine call (vLLM batches them with
continuous batching; the OpenAI-compatible engine sends concurrent requests; transformers pads a batch),
so a round costs about as much as its longest turn rather than the sum of all turns.

Two window modes (``RerankConfig.window_mode``):

* ``ours`` (default): windows cover the list as it is (:func:`window_starts` of its length, so a short
  list is covered entirely) and each window is reordered by the episode's normalised ranking
  (:func:`vretrver.protocol.normalize_ranking`: a single number moves that candidate to the top).
* ``official``: the rules of the public release's ``sliding_window_processor.py``, restated in
  :func:`official_window_starts` and :func:`official_window_order`: fixed windows (30-49, 20-39, 10-29,
  0-19 for 50 / 20 / 10) whatever the list length, a window that does not fit entirely inside the list is
  left as it is, and only an answer that is a bracketed list reorders its window.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from vretrver.engines.base import Engine, GenerationConfig
from vretrver.episode import Episode
from vretrver.protocol import load_profile
from vretrver.protocol.profile import Profile
from vretrver.samples import Candidate, Sample


@dataclass
class RerankConfig:
    profile: str = "v-retrver"
    max_tool_calls: int | None = None  # None: the profile's budget
    window: int = 20
    stride: int = 10
    top_n: int = 50
    window_mode: str = "ours"  # ours | official (see the module docstring)
    # How many episodes go to the engine in one call (None: all live episodes).
    batch_size: int | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def run_episodes(
    samples: Sequence[Sample],
    engine: Engine,
    profile: Profile | str = "v-retrver",
    gen: GenerationConfig | None = None,
    max_tool_calls: int | None = None,
    batch_size: int | None = None,
    progress: bool | str = False,
) -> list[Episode]:
    """Run one episode per sample to completion; all live episodes advance together, round by round."""
    profile = load_profile(profile)
    gen = gen or GenerationConfig(stop=list(profile.stop))
    episodes = [Episode(s, profile, engine.tool_config, max_tool_calls) for s in samples]
    bar = tqdm(
        total=len(episodes), desc=progress if isinstance(progress, str) else "episodes", disable=not progress
    )
    while True:
        live = [e for e in episodes if not e.done]
        if not live:
            break
        step = batch_size or len(live)
        for i in range(0, len(live), step):
            chunk = live[i : i + step]
            outs = engine.continue_conversations([e.conversation for e in chunk], gen)
            for ep, out in zip(chunk, outs, strict=True):
                if out.error is not None or out.text is None:
                    ep.fail(out.error or "no text")
                else:
                    ep.step(out.text)
                if ep.done:
                    bar.update(1)
    bar.close()
    return episodes


def window_starts(n: int, window: int = 20, stride: int = 10) -> list[int]:
    """Start positions of the windows over a list of n, back to front: 50/20/10 -> 30, 20, 10, 0."""
    if n <= window:
        return [0]
    starts = list(range(n - window, -1, -stride))
    if starts[-1] != 0:
        starts.append(0)
    return starts


WINDOW_MODES = ("ours", "official")
# The official driver reads a window's ranking from the whole response with this pattern (first match).
_OFFICIAL_ANSWER = re.compile(r"<answer>\s*\[([^\]]+)\]\s*</answer>")


def official_window_starts(top_n: int = 50, window: int = 20, stride: int = 10) -> list[int]:
    """The official window starts, fixed by the configured top-N rather than by a list's length.

    The release hard-codes 30, 20, 10, 0 (for top-50, window 20, stride 10); for other settings this is
    the same rule stated generally: top_n - window, then every ``stride`` down, 0 always last.
    """
    return window_starts(top_n, window, stride)


def official_window_applies(start: int, window: int, n: int) -> bool:
    """Whether the official driver reorders a window: only one lying entirely inside the list.

    A window starting past the end is sent unchanged and its answer ignored; one running past the end
    is sent shortened and its answer ignored too (``window_start + window_size > len(hits)``).
    """
    return start + window <= n


def official_window_order(response: str, window: int) -> list[int] | None:
    """The new order of a window (0-based positions) from a response, by the official rules; None: unchanged.

    The first ``<answer>[...]</answer>`` of the response is read (no bracketed list: the window stays);
    its comma-separated items are read as integers (others skipped) and made 0-based; repeats keep
    their first place; positions outside the window are dropped; the positions it leaves out follow in
    ascending order. An answer with no usable number leaves the window as it is.
    """
    m = _OFFICIAL_ANSWER.search(response)
    if not m:
        return None
    order: list[int] = []
    for item in m.group(1).split(","):
        try:
            pos = int(item.strip()) - 1
        except ValueError:
            continue
        if 0 <= pos < window and pos not in order:
            order.append(pos)
    if not order:
        return None
    return order + [p for p in range(window) if p not in order]


def episode_response(ep: Episode) -> str:
    """The whole response of an episode as one text (model turns and tool observations, in order)."""
    return "".join(t.text for t in ep.turns)


@dataclass
class WindowedResult:
    sample_id: str
    ranked_ids: list[str]
    episodes: list[Episode]  # in the order the windows were visited
    # Per episode: whether its answer reordered the window (official mode may leave a window unchanged).
    applied: list[bool] = field(default_factory=list)


def rerank_windows(
    samples: Sequence[Sample],
    engine: Engine,
    config: RerankConfig | None = None,
    progress: bool = False,
    on_round: Callable[[int, int], None] | None = None,
) -> list[WindowedResult]:
    """Rerank each sample's candidate list (its first-stage top-N) in sliding windows.

    Windows are visited back to front (for 50 / 20 / 10: positions 30-49, 20-39, 10-29, 0-19, 0-based);
    each window is reordered in place by the model's answer before the next one is built, so strong
    candidates bubble up. The same window of all samples is one batch of concurrent episodes.
    In ``official`` window mode, windows the official driver would not apply are not run at all.
    """
    cfg = config or RerankConfig()
    if cfg.window_mode not in WINDOW_MODES:
        raise ValueError(f"window mode must be one of {WINDOW_MODES}, got {cfg.window_mode!r}")
    official = cfg.window_mode == "official"
    profile = load_profile(cfg.profile)
    gen = cfg.generation
    lists: list[list[Candidate]] = [list(s.candidates[: cfg.top_n]) for s in samples]
    if official:
        fixed = official_window_starts(cfg.top_n, cfg.window, cfg.stride)
        plans = [[s for s in fixed if official_window_applies(s, cfg.window, len(c))] for c in lists]
    else:
        plans = [window_starts(len(c), cfg.window, cfg.stride) for c in lists]
    episodes: list[list[Episode]] = [[] for _ in samples]
    applied: list[list[bool]] = [[] for _ in samples]
    rounds = max((len(p) for p in plans), default=0)
    for r in range(rounds):
        batch, owners = [], []
        for i, (s, cands, plan) in enumerate(zip(samples, lists, plans, strict=True)):
            if r < len(plan) and cands:
                start = plan[r]
                window = cands[start : start + cfg.window]
                batch.append(replace(s, candidates=window, meta={**s.meta, "window_start": start}))
                owners.append((i, start))
        if on_round:
            on_round(r, len(batch))
        eps = run_episodes(
            batch,
            engine,
            profile,
            gen,
            cfg.max_tool_calls,
            cfg.batch_size,
            progress=f"window {r + 1}/{rounds}" if progress else False,
        )
        for ep, (i, start) in zip(eps, owners, strict=True):
            window = lists[i][start : start + cfg.window]
            if official:
                order = official_window_order(episode_response(ep), len(window))
                if order is not None:
                    lists[i][start : start + len(window)] = [window[p] for p in order]
                applied[i].append(order is not None)
            else:
                lists[i][start : start + len(window)] = [window[n - 1] for n in ep.ranking]
                applied[i].append(True)
            episodes[i].append(ep)
    return [
        # Candidates past the top-N keep their first-stage order behind the reranked ones.
        WindowedResult(s.id, [c.id for c in cands] + [c.id for c in s.candidates[cfg.top_n :]], eps, done)
        for s, cands, eps, done in zip(samples, lists, episodes, applied, strict=True)
    ]
