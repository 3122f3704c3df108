"""Drive many reranking episodes concurrently over one engine, and the sliding window over top-N lists.

Each round sends the next turn of every live episode in ONE engine call (vLLM batches them with
continuous batching; the OpenAI-compatible engine sends concurrent requests; transformers pads a batch),
so a round costs about as much as its longest turn rather than the sum of all turns. This is the
round-synchronous driver; :mod:`vretrver.scheduler` runs the same windows (:class:`QueryRun`) with
continuous scheduling, which does not wait for the longest turn of a round.

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

from PIL import Image
from tqdm.auto import tqdm

from vretrver.engines.base import Completion, Engine, GenerationConfig
from vretrver.episode import Episode
from vretrver.images import load_image
from vretrver.protocol import load_profile
from vretrver.protocol.profile import Profile
from vretrver.samples import Candidate, Sample
from vretrver.tools import ToolConfig


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
    # rounds: one engine call per round of a group of queries; continuous: every query and episode
    # advances on its own (vretrver.scheduler). Greedy results are the same.
    scheduler: str = "rounds"
    max_inflight: int = 64  # continuous: episodes in flight at once (one per query: windows are dependent)
    # Decode each image file once per query (the windows overlap) instead of once per engine call.
    image_cache: bool = True


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
    return advance_episodes(episodes, engine, gen, batch_size, progress)


def advance_episodes(
    episodes: list[Episode],
    engine: Engine,
    gen: GenerationConfig,
    batch_size: int | None = None,
    progress: bool | str = False,
) -> list[Episode]:
    """Run episodes to completion, round by round: each round is one engine call per ``batch_size``."""
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
                feed(ep, out)
                if ep.done:
                    bar.update(1)
    bar.close()
    return episodes


def feed(ep: Episode, out: Completion) -> None:
    """Give an episode the engine's answer to its last turn (an error ends it as failed)."""
    if out.error is not None or out.text is None:
        ep.fail(out.error or "no text")
    else:
        ep.step(out.text)


def window_starts(n: int, window: int = 20, stride: int = 10) -> list[int]:
    """Start positions of the windows over a list of n, back to front: 50/20/10 -> 30, 20, 10, 0."""
    if n <= window:
        return [0]
    starts = list(range(n - window, -1, -stride))
    if starts[-1] != 0:
        starts.append(0)
    return starts


WINDOW_MODES = ("ours", "official")
SCHEDULERS = ("rounds", "continuous")
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


class ImageCache:
    """The decoded images of one query, shared by its windows: each file is decoded (and capped) once.

    A file that does not open is remembered as such and handed back as its path, so the engine reports
    it exactly as it would without the cache. :meth:`keep` drops the images no later window shows.
    """

    def __init__(self) -> None:
        self._images: dict[str, Image.Image | str] = {}
        self.decoded = 0  # files decoded (for tests and benchmarks)

    def __call__(self, path: str) -> Image.Image | str:
        hit = self._images.get(path)
        if hit is None:
            try:
                hit = load_image(path)
                self.decoded += 1
            except (OSError, ValueError):
                hit = path
            self._images[path] = hit
        return hit

    def keep(self, paths: set[str]) -> None:
        self._images = {p: im for p, im in self._images.items() if p in paths}

    def __len__(self) -> int:
        return len(self._images)


class QueryRun:
    """One query going through its windows: the next window's episode, then its answer applied.

    Both drivers use it (the round-synchronous :func:`rerank_windows` and the continuous
    :func:`vretrver.scheduler.rerank_continuous`), so they reorder lists by the same rules.
    """

    def __init__(self, sample: Sample, cfg: RerankConfig, profile: Profile, tool_config: ToolConfig | None):
        self.sample = sample
        self.cfg = cfg
        self.profile = profile
        self.tool_config = tool_config
        self.official = cfg.window_mode == "official"
        self.cands: list[Candidate] = list(sample.candidates[: cfg.top_n])
        if not self.cands:
            self.plan: list[int] = []
        elif self.official:
            fixed = official_window_starts(cfg.top_n, cfg.window, cfg.stride)
            self.plan = [s for s in fixed if official_window_applies(s, cfg.window, len(self.cands))]
        else:
            self.plan = window_starts(len(self.cands), cfg.window, cfg.stride)
        self.episodes: list[Episode] = []
        self.applied: list[bool] = []
        self.images = ImageCache() if cfg.image_cache else None

    @property
    def done(self) -> bool:
        return len(self.episodes) >= len(self.plan)

    def next_episode(self) -> Episode | None:
        """The episode of the next window (None: every window is done)."""
        if self.done:
            return None
        start = self.plan[len(self.episodes)]
        window = self.cands[start : start + self.cfg.window]
        s = replace(self.sample, candidates=window, meta={**self.sample.meta, "window_start": start})
        return Episode(s, self.profile, self.tool_config, self.cfg.max_tool_calls, load=self.images)

    def finish(self, ep: Episode) -> None:
        """Apply a finished episode's answer to its window."""
        start = ep.sample.meta["window_start"]
        window = self.cands[start : start + self.cfg.window]
        if self.official:
            order = official_window_order(episode_response(ep), len(window))
            if order is not None:
                self.cands[start : start + len(window)] = [window[p] for p in order]
            self.applied.append(order is not None)
        else:
            self.cands[start : start + len(window)] = [window[n - 1] for n in ep.ranking]
            self.applied.append(True)
        self.episodes.append(ep)
        if self.images is not None:
            # Later windows only show positions before the end of the furthest one still to come.
            end = max((s + self.cfg.window for s in self.plan[len(self.episodes) :]), default=0)
            keep = {c.image for c in self.cands[:end] if c.image}
            self.images.keep(keep | set(self.sample.query.images) if end else set())

    def result(self) -> WindowedResult:
        # Candidates past the top-N keep their first-stage order behind the reranked ones.
        ranked = [c.id for c in self.cands] + [c.id for c in self.sample.candidates[self.cfg.top_n :]]
        return WindowedResult(self.sample.id, ranked, self.episodes, self.applied)


def check_rerank_config(cfg: RerankConfig) -> None:
    if cfg.window_mode not in WINDOW_MODES:
        raise ValueError(f"window mode must be one of {WINDOW_MODES}, got {cfg.window_mode!r}")
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    if cfg.max_inflight < 1:
        raise ValueError(f"max-inflight must be >= 1, got {cfg.max_inflight}")


def rerank_windows(
    samples: Sequence[Sample],
    engine: Engine,
    config: RerankConfig | None = None,
    progress: bool = False,
    on_round: Callable[[int, int], None] | None = None,
) -> list[WindowedResult]:
    """Rerank each sample's candidate list (its first-stage top-N) in sliding windows, round by round.

    Windows are visited back to front (for 50 / 20 / 10: positions 30-49, 20-39, 10-29, 0-19, 0-based);
    each window is reordered in place by the model's answer before the next one is built, so strong
    candidates bubble up. The same window of all samples is one batch of concurrent episodes, and the
    next window starts once the whole batch is done. In ``official`` window mode, windows the official
    driver would not apply are not run at all. :func:`vretrver.scheduler.rerank_continuous` gives the
    same results without waiting for the slowest episode of a round.
    """
    cfg = config or RerankConfig()
    check_rerank_config(cfg)
    profile = load_profile(cfg.profile)
    runs = [QueryRun(s, cfg, profile, engine.tool_config) for s in samples]
    rounds = max((len(q.plan) for q in runs), default=0)
    for r in range(rounds):
        batch = [(q, ep) for q in runs if (ep := q.next_episode()) is not None]
        if on_round:
            on_round(r, len(batch))
        advance_episodes(
            [ep for _, ep in batch],
            engine,
            cfg.generation,
            cfg.batch_size,
            progress=f"window {r + 1}/{rounds}" if progress else False,
        )
        for q, ep in batch:
            q.finish(ep)
    return [q.result() for q in runs]
